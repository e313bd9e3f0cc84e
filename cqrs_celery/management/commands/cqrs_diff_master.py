"""Master side of the diff pipe: stream (pk, revision) of master rows for cqrs_diff_replica."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import router
from django.utils import timezone

from cqrs_celery.management import pipes
from cqrs_celery.master.mixins import MasterMixin


class Command(BaseCommand):
    help = ('Write "<CQRS_ID>,<time>" then [[pk, revision], ...] lines of the master rows, for '
            '`cqrs_diff_master --cqrs-id ID | cqrs_diff_replica | cqrs_diff_sync` (django-cqrs\'s pipe).')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--cqrs-id', '-cid', required=True, help='CQRS_ID of the master model.')
        parser.add_argument('--filter', '-f', default=None, help='Only rows matching this JSON object of lookups.')
        parser.add_argument('--batch', '-b', type=int, default=10000, help='Rows per line (default 10000).')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, cqrs_id: str, filter: str | None = None, batch: int = 10000,
               database: str | None = None, **options: Any) -> None:
        model = pipes.master_model(cqrs_id)
        using = database or router.db_for_read(model)
        queryset = pipes.filtered(model._base_manager.using(using), filter)
        self.stdout.write(f'{model.CQRS_ID},{timezone.now()}')
        # Rows are read as (pk, revision) pairs unless the model decides per instance what is synced.
        plain = model.is_sync_instance is MasterMixin.is_sync_instance
        rows = 0
        for chunk in pipes.batches(queryset, batch, ('cqrs_revision',) if plain else None):
            if plain:
                package = [[pipes.pk_json(pk), revision] for pk, revision in chunk]
            else:
                package = [[pipes.pk_json(obj.pk), obj.cqrs_revision] for obj in chunk if obj.is_sync_instance()]
            if package:
                rows += len(package)
                self.stdout.write(pipes.dumps(package))
        if not rows:
            self.stderr.write(f'no {cqrs_id} rows found')
