"""Replica side of the diff pipe: the master pks whose revision differs here (or that are missing here)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router

from cqrs_celery.conf import get_settings
from cqrs_celery.management import pipes


class Command(BaseCommand):
    help = ('Read cqrs_diff_master\'s output on stdin; write its header with this service\'s queue appended, '
            'then [pk, ...] lines of the rows missing here or with another revision, for cqrs_diff_sync.')

    stealth_options = ('stdin',)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, database: str | None = None, **options: Any) -> None:
        stream = pipes.input_stream(options)
        cqrs_id, rest = pipes.header(stream, 'cqrs_diff_replica')
        model = pipes.replica_model(cqrs_id)
        if model.CQRS_NO_DB_OPERATIONS:
            raise CommandError(f'{cqrs_id}: {model.__qualname__} keeps no table, so it has no rows to compare.')
        using = database or router.db_for_read(model)
        queue = get_settings().queue or pipes.NO_QUEUE
        self.stdout.write(','.join([cqrs_id, *rest, queue]))
        total = 0
        for package in pipes.packages(stream, 'cqrs_diff_replica'):
            if not all(isinstance(row, list) and len(row) == 2 for row in package):
                raise CommandError('cqrs_diff_replica: expected lines of [[pk, revision], ...] from cqrs_diff_master')
            master = {pipes.python_pk(model, pk): (pk, revision) for pk, revision in package}
            stored = dict(model._default_manager.using(using).filter(pk__in=list(master))
                          .values_list('pk', 'cqrs_revision'))
            differ = [given for pk, (given, revision) in master.items() if stored.get(pk, -1) != revision]
            if differ:
                total += len(differ)
                self.stdout.write(pipes.dumps(differ))
        self.stderr.write(f'{total} {cqrs_id} rows to resync')
