"""Master side, end of the diff pipe: send the rows cqrs_diff_replica listed, as forced SYNCs to its queue."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from cqrs_celery.management import pipes


class Command(BaseCommand):
    help = ('Read cqrs_diff_replica\'s output on stdin and publish the listed master rows as SYNCs to the '
            'replica queue named in its header only (forced: they apply even where that replica holds a '
            'higher revision), through cqrs_sync.')

    stealth_options = ('stdin',)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--batch', '-b', type=int, default=1000, help='Rows read per query (default 1000).')
        parser.add_argument('--progress', '-p', action='store_true',
                            help='Show a progress bar (the default on a terminal).')
        parser.add_argument('--dry-run', action='store_true', help='Count the rows; publish nothing.')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, batch: int = 1000, progress: bool = False, dry_run: bool = False,
               database: str | None = None, **options: Any) -> None:
        stream = pipes.input_stream(options)
        cqrs_id, rest = pipes.header(stream, 'cqrs_diff_sync')
        model = pipes.master_model(cqrs_id)
        queue = rest[-1] if len(rest) >= 2 and rest[-1] != pipes.NO_QUEUE else None
        for package in pipes.packages(stream, 'cqrs_diff_sync'):
            pks = list(pipes.json_pks(model, package).values())
            sync = {'cqrs_id': model.CQRS_ID, 'filter': pipes.dumps({'pk__in': pks}), 'batch': batch,
                    'progress': progress, 'dry_run': dry_run, 'database': database}
            if queue:
                sync.update(queue=queue, force=True)
            call_command('cqrs_sync', stdout=self.stdout, stderr=self.stderr, **sync)
