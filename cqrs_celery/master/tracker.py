"""Tracked fields of master models: which values a save changed, sent as ``previous_data``.

The values are those django-cqrs sends: a foreign key is tracked by its column (``author_id``);
what a save of an existing row changed is keyed by field name (``author``), with the value the row
had before; a created row lists the tracked columns it sets, each with ``None`` as its previous value.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from model_utils import FieldTracker
from model_utils.tracker import FieldInstanceTracker

from cqrs_celery.constants import FIELDS_TRACKER_FIELD_NAME, TRACKED_FIELDS_ATTR_NAME
from cqrs_celery.serialization import to_json

#: Attribute of a tracked master model (and its instances) holding the field tracker.
TRACKER_NAME = FIELDS_TRACKER_FIELD_NAME

#: Instance attribute holding what the last save captured (``get_tracked_fields_data()``).
TRACKED_DATA_ATTR = TRACKED_FIELDS_ATTR_NAME


class _InstanceTracker(FieldInstanceTracker):
    def changed(self) -> dict[str, Any]:
        names = _names(type(self.instance))
        return {names.get(key, key): to_json(value) for key, value in super().changed().items()}

    def changed_initial(self) -> dict[str, Any]:
        """The tracked columns a new row sets (not None), each with ``None`` as its previous value."""
        return {field: None for field in sorted(self.fields) if self.get_field_value(field) is not None}

    def current_json(self) -> dict[str, Any]:
        """Every tracked column's current value, JSON-safe (what ``Model.cqrs.bulk_update`` sends)."""
        return {key: to_json(value) for key, value in self.current().items()}


class CQRSTracker(FieldTracker):
    """``FieldTracker`` over the columns named by ``CQRS_TRACKED_FIELDS``."""

    tracker_class = _InstanceTracker

    @classmethod
    def add_to_model(cls, model: type[models.Model], declared: Any) -> None:
        columns = [f.attname if f.is_relation else f.name for f in model._meta.concrete_fields
                   if declared == '__all__' or f.name in declared]
        tracker = cls(fields=columns)
        tracker.name, tracker.attname = TRACKER_NAME, f'_{TRACKER_NAME}'
        tracker.finalize_class(model)


def _names(model: type[models.Model]) -> dict[str, str]:
    return {f.attname: f.name for f in model._meta.concrete_fields if f.is_relation}


def capture(instance: Any, *, merge: bool = False) -> None:
    """Remember what this save changes in the tracked fields (called by ``save()`` before writing).

    With ``merge`` (a later save of the instance in the same transaction) the values captured
    before win: each field keeps its value from before the transaction's first change.
    """
    tracker = getattr(instance, TRACKER_NAME, None) if has_tracker(type(instance)) else None
    if tracker is None:
        return
    data = tracker.changed_initial() if instance._state.adding else tracker.changed()
    earlier = instance.__dict__.get(TRACKED_DATA_ATTR) if merge else None
    if earlier is not None:
        data.update(earlier)
    setattr(instance, TRACKED_DATA_ATTR, data)


def capture_created(instances: list[Any]) -> None:
    """``capture`` for rows about to be inserted in bulk."""
    for instance in instances:
        tracker = getattr(instance, TRACKER_NAME, None) if has_tracker(type(instance)) else None
        if tracker is not None:
            setattr(instance, TRACKED_DATA_ATTR, tracker.changed_initial())


def has_tracker(model: Any) -> bool:
    return isinstance(getattr(model, TRACKER_NAME, None), CQRSTracker)
