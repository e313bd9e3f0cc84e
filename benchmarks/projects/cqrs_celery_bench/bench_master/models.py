"""The master's replicated model, a plain model of the same shape (the baseline of scenario F), and the
replicated model with replication switched off (``CQRS_PRODUCE = False``, another baseline of F)."""

from common import CQRS_ID
from shapes import TRACKED_FIELDS, item_fields

from cqrs_celery.mixins import MasterMixin

ItemFields = item_fields()


class Item(MasterMixin, ItemFields):
    CQRS_ID = CQRS_ID
    if TRACKED_FIELDS:
        CQRS_TRACKED_FIELDS = TRACKED_FIELDS


class PlainItem(ItemFields):
    pass


class QuietItem(MasterMixin, ItemFields):
    """``Item`` with ``CQRS_PRODUCE = False``: its revision columns and save, no outbox event."""

    CQRS_ID = f'{CQRS_ID}_quiet'
    CQRS_PRODUCE = False
    if TRACKED_FIELDS:
        CQRS_TRACKED_FIELDS = TRACKED_FIELDS
