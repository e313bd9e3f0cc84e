"""The master's replicated model and a plain model of the same shape (the baseline of scenario F)."""

from common import CQRS_ID
from dj_cqrs.mixins import MasterMixin
from shapes import item_fields

ItemFields = item_fields()


class Item(MasterMixin, ItemFields):
    CQRS_ID = CQRS_ID


class PlainItem(ItemFields):
    pass
