"""Master side of the deleted-rows pipe: the replica's pks that no longer exist on the master."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import router

from cqrs_celery.management import pipes


class Command(BaseCommand):
    help = ('Read cqrs_deleted_diff_replica\'s output on stdin; write its header, then [pk, ...] lines of the '
            'pks the master no longer has, for cqrs_deleted_sync_replica.')

    stealth_options = ('stdin',)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, database: str | None = None, **options: Any) -> None:
        stream = pipes.input_stream(options)
        cqrs_id, rest = pipes.header(stream, 'cqrs_deleted_diff_master')
        model = pipes.master_model(cqrs_id)
        using = database or router.db_for_read(model)
        self.stdout.write(','.join([cqrs_id, *rest]))
        total = 0
        for package in pipes.packages(stream, 'cqrs_deleted_diff_master'):
            given = pipes.json_pks(model, package)
            found = set(model._base_manager.using(using).filter(pk__in=list(given)).values_list('pk', flat=True))
            gone = [value for pk, value in given.items() if pk not in found]
            if gone:
                total += len(gone)
                self.stdout.write(pipes.dumps(gone))
        self.stderr.write(f'{total} {cqrs_id} rows to delete on the replica')
