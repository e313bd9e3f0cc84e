"""The replica model API that django-cqrs exposes as ``Model.cqrs`` and the library's own methods.

``save_instance``/``delete_instance`` are what ``ReplicaMixin.cqrs_save``/``cqrs_delete`` do. Inside
the apply path (an override's ``super()``) they apply within its transaction and report back to it;
called directly, they run the same revision and tombstone rules in a transaction of their own. On
data that does not fit or a database error they log and return ``None``/``False``, as django-cqrs
does; the apply path then retries the envelope or dead-letters it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import Error, models, router, transaction

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import CQRSError, DataError
from cqrs_celery.replica.apply import apply_row, apply_rules, master_pk, replica_pk
from cqrs_celery.replica.hooks import claim_applying, has_no_table
from cqrs_celery.replica.outcomes import Outcome, Result

logger = logging.getLogger(__name__)

#: What a failed save or delete returns None/False for instead of raising.
FAILURES = (CQRSError, Error, ValidationError)


def save_instance(model: Any, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                  sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
    """Create or update ``model``'s row from master data; the instance, or None (logged) on failure."""
    _require_table(model, 'cqrs_save')
    signal_type = SignalType.SYNC if sync else SignalType.SAVE
    state = claim_applying(model)
    try:
        if state is not None:
            envelope = state.envelope.replace(signal_type=signal_type, instance_data=master_data,
                                              previous_data=previous_data, meta=meta)
            with transaction.atomic(using=state.using):
                result = apply_rules(model, envelope, state.using, dispatch=False)
            state.result = result
            return result.instance
        envelope = Envelope(signal_type=signal_type, cqrs_id=model.CQRS_ID, instance_pk=master_pk(model, master_data),
                            instance_data=dict(master_data), previous_data=previous_data, meta=meta)
        return apply_row(model, envelope, dispatch=False).instance
    except FAILURES as exc:
        if state is not None:
            state.error = exc
        _log_failure(model, signal_type, master_data, exc)
        return None


def delete_instance(model: Any, master_data: dict[str, Any]) -> bool:
    """Delete the row ``master_data`` names (its pk, or ``'id'``); False (logged) on failure.

    Deleting a row that is not there succeeds. Called directly, the DELETE's revision is checked
    and remembered (a tombstone), as on the apply path.
    """
    _require_table(model, 'cqrs_delete')
    state = claim_applying(model)
    try:
        if state is not None:
            pk = replica_pk(model, master_data, master_data.get('id', state.envelope.instance_pk))
            with transaction.atomic(using=state.using):
                model._default_manager.db_manager(state.using).filter(pk=pk).delete()
            state.result = Result(Outcome.DELETED)
            return True
        envelope = Envelope(signal_type=SignalType.DELETE, cqrs_id=model.CQRS_ID,
                            instance_pk=master_pk(model, master_data, master_data.get('id')),
                            instance_data=dict(master_data))
        if envelope.instance_pk is None:
            raise DataError(f'{model._meta.label}: no primary key in the data')
        apply_row(model, envelope, dispatch=False)
        return True
    except FAILURES as exc:
        if state is not None:
            state.error = exc
        _log_failure(model, SignalType.DELETE, master_data, exc)
        return False


def _require_table(model: Any, method: str) -> None:
    if has_no_table(model):
        raise NotImplementedError(
            f'{model.__qualname__} has no table (abstract or CQRS_NO_DB_OPERATIONS): implement {method}() on it.'
        )


def _log_failure(model: Any, what: str, data: Any, exc: BaseException) -> None:
    pk = master_pk(model, data, data.get('id')) if isinstance(data, dict) else None
    revision = data.get(FIELD_REVISION) if isinstance(data, dict) else None
    logger.error('cqrs %s failed: cqrs_id=%s pk=%s revision=%s error=%s',
                 what, getattr(model, 'CQRS_ID', None), pk, revision, exc)


class ReplicaManager(models.Manager):  # type: ignore[type-arg]
    """``Model.cqrs``: django-cqrs's replica manager methods, with this library's rules."""

    def save_instance(self, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                      sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Create or update the row from master data (see ``ReplicaMixin.cqrs_save``)."""
        return save_instance(self.model, master_data, previous_data, sync, meta)

    def delete_instance(self, master_data: dict[str, Any]) -> bool:
        """Delete the row master data names (see ``ReplicaMixin.cqrs_delete``)."""
        return delete_instance(self.model, master_data)

    def create_instance(self, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                        sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Call the model's ``cqrs_create`` with mapped data; None (logged) when the database refuses it."""
        kwargs = self._hook_kwargs(previous_data, meta)
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                return self.model.cqrs_create(sync, mapped_data, **kwargs)
        except (Error, ValidationError) as exc:
            _log_failure(self.model, 'create', mapped_data, exc)
            return None

    def update_instance(self, instance: Any, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                        sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Call ``instance.cqrs_update`` unless the data is older than the row or a duplicate (not on a sync)."""
        revision, stored = mapped_data.get(FIELD_REVISION), instance.cqrs_revision
        if not sync and isinstance(revision, int) and revision <= stored:
            logger.info('cqrs %s update skipped: cqrs_id=%s pk=%s revision=%s stored=%s',
                        'duplicate' if revision == stored else 'stale', self.model.CQRS_ID, instance.pk,
                        revision, stored)
            return instance
        kwargs = self._hook_kwargs(previous_data, meta)
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                return instance.cqrs_update(sync, mapped_data, **kwargs)
        except (Error, ValidationError) as exc:
            _log_failure(self.model, 'update', mapped_data, exc)
            return None

    def _hook_kwargs(self, previous_data: dict[str, Any] | None, meta: dict[str, Any] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {'previous_data': previous_data}
        if self.model.CQRS_META:
            kwargs['meta'] = meta
        return kwargs
