"""Replica side, start of the deleted-rows pipe: stream the pks this replica holds."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router
from django.utils import timezone

from cqrs_celery.management import pipes


class Command(BaseCommand):
    help = ('Write "<CQRS_ID>,<time>" then [pk, ...] lines of the replica\'s rows, for '
            '`cqrs_deleted_diff_replica --cqrs-id ID | cqrs_deleted_diff_master | cqrs_deleted_sync_replica`.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--cqrs-id', '-cid', required=True, help='CQRS_ID of the replica model.')
        parser.add_argument('--filter', '-f', default=None, help='Only rows matching this JSON object of lookups.')
        parser.add_argument('--batch', '-b', type=int, default=10000, help='Pks per line (default 10000).')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, cqrs_id: str, filter: str | None = None, batch: int = 10000,
               database: str | None = None, **options: Any) -> None:
        model = pipes.replica_model(cqrs_id)
        if model.CQRS_NO_DB_OPERATIONS:
            raise CommandError(f'{cqrs_id}: {model.__qualname__} keeps no table, so it has no rows to compare.')
        using = database or router.db_for_read(model)
        queryset = pipes.filtered(model._default_manager.using(using), filter)
        self.stdout.write(f'{model.CQRS_ID},{timezone.now()}')
        rows = 0
        for chunk in pipes.batches(queryset, batch, ()):
            rows += len(chunk)
            self.stdout.write(pipes.dumps([pipes.pk_json(pk) for pk, in chunk]))
        if not rows:
            self.stderr.write(f'no {cqrs_id} rows found')
