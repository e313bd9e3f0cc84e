"""What this service keeps of the master's library, one replica per ``CQRS_ID``.

* ``author`` → :class:`Author`: a copy that also stores who made the last change (``CQRS_META``).
* ``book``   → :class:`BookCopy`: a copy with other field names (``CQRS_MAPPING``).
* ``stock``  → :class:`StockWatch`: no table at all (``RawReplicaMixin``); it writes a line for
  every stock change, with the old quantity from ``previous_data``.

Replicas are read-only: only the worker writes them, in revision order.
"""

import datetime
import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models

from cqrs_celery.mixins import RawReplicaMixin, ReplicaMixin

logger = logging.getLogger(__name__)


class Author(ReplicaMixin):
    """The master's authors, plus the origin of the last change, taken from the event's metadata."""

    CQRS_ID = 'author'
    CQRS_META = True  # cqrs_create / cqrs_update receive meta=

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    country = models.CharField(max_length=100, blank=True)
    changed_by = models.CharField(max_length=100, blank=True)
    tenant = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ['id']

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def origin(meta: dict[str, Any] | None) -> dict[str, str]:
        meta = meta or {}
        return {'changed_by': str(meta.get('changed_by', '')), 'tenant': str(meta.get('tenant', ''))}

    @classmethod
    def cqrs_create(cls, sync: bool, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> 'Author':
        return super().cqrs_create(sync, {**mapped_data, **cls.origin(meta)}, previous_data, meta)

    def cqrs_update(self, sync: bool, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> 'Author':
        return super().cqrs_update(sync, {**mapped_data, **self.origin(meta)}, previous_data, meta)


class BookCopy(ReplicaMixin):
    """The master's books under this service's own names: ``title`` is stored as ``name``."""

    CQRS_ID = 'book'
    CQRS_MAPPING = {
        'id': 'id',
        'title': 'name',
        'author': 'author_id',
        'price': 'price',
        'published': 'published',
    }

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    # A plain id, not a ForeignKey: a book may arrive before its author, and never waits for it.
    author_id = models.BigIntegerField(db_index=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published = models.DateField(null=True)

    class Meta:
        ordering = ['id']

    def __str__(self) -> str:
        return self.name


class StockWatch(RawReplicaMixin):
    """No copy of the stock: one line per change, written to ``STOCK_LOG_FILE`` and logged.

    A raw replica gets every delivery as it comes, without the revision checks a table replica
    has, so each line names the revision it describes.
    """

    CQRS_ID = 'stock'
    CQRS_META = True

    @classmethod
    def cqrs_save(cls, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                  sync: bool = False, meta: dict[str, Any] | None = None) -> bool:
        title = master_data.get('book_title') or f"book #{master_data.get('book')}"
        quantity = master_data.get('quantity')
        # A created row's previous_data names its tracked fields with None (as django-cqrs sends it).
        if previous_data and previous_data.get('quantity') is not None:
            text = f"stock of '{title}' changed from {previous_data['quantity']} to {quantity}"
        else:
            text = f"stock of '{title}' is {quantity}" + (' (sync)' if sync else '')
        return cls.write(text, master_data, meta)

    @classmethod
    def cqrs_delete(cls, master_data: dict[str, Any], meta: dict[str, Any] | None = None) -> bool:
        title = master_data.get('book_title') or f"book #{master_data.get('id')}"
        return cls.write(f"stock of '{title}' removed", master_data, meta)

    @classmethod
    def write(cls, text: str, master_data: dict[str, Any], meta: dict[str, Any] | None) -> bool:
        who = (meta or {}).get('changed_by', 'unknown')
        line = f"{text} (stock {master_data.get('id')}, rev {master_data.get('cqrs_revision')}, by {who})"
        path = Path(settings.STOCK_LOG_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open('a', encoding='utf-8') as log:  # one short append: lines of two workers never mix
            log.write(f'{datetime.datetime.now():%H:%M:%S} {line}\n')
        logger.info('%s', line)
        return True
