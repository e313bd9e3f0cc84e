"""The master's replicated model and a plain model of the same shape (the baseline of scenario F)."""

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
