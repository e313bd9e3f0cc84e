"""The replica's copy of the bench row."""

from common import CQRS_ID
from dj_cqrs.mixins import ReplicaMixin
from django.db import models
from shapes import item_fields

ItemFields = item_fields()


class ItemCopy(ReplicaMixin, ItemFields):
    CQRS_ID = CQRS_ID

    id = models.BigIntegerField(primary_key=True)
