"""Write every row of a master model to a file, one JSON document per line (no broker)."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router

from cqrs_celery.management import pipes
from cqrs_celery.management.progress import Progress


class Command(BaseCommand):
    help = ('Dump a master model for cqrs_bulk_load: the CQRS_ID on the first line, then each row as sent '
            'to replicas (to_cqrs_dict), one JSON object per line. No broker is used.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--cqrs-id', '-c', '-cid', required=True, help='CQRS_ID of the master model.')
        parser.add_argument('--output', '-o', default=None,
                            help='File to write (default <cqrs_id>.dump; - for stdout).')
        parser.add_argument('--batch', '-b', type=int, default=10000, help='Rows read per query (default 10000).')
        parser.add_argument('--progress', '-p', action='store_true',
                            help='Show a progress bar (the default on a terminal).')
        parser.add_argument('--force', '-f', action='store_true', help='Overwrite the output file.')
        parser.add_argument('--filter', default=None, help='Only rows matching this JSON object of lookups.')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, cqrs_id: str, output: str | None = None, batch: int = 10000,
               progress: bool = False, force: bool = False, filter: str | None = None,
               database: str | None = None, **options: Any) -> None:
        model = pipes.master_model(cqrs_id)
        if batch < 1:
            raise CommandError('--batch must be at least 1.')
        path = output or f'{cqrs_id}.dump'
        if path != '-' and os.path.exists(path) and not force:
            raise CommandError(f'{path} exists: choose another --output, or --force to overwrite it.')
        using = database or router.db_for_read(model)
        queryset = pipes.filtered(model.relate_cqrs_serialization(model._base_manager.using(using)), filter)
        total = queryset.count()
        try:
            stream = self.stdout if path == '-' else open(path, 'w', encoding='utf-8')  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f'cannot write {path}: {exc}') from exc
        bar = Progress(total, wanted=progress, lines=self.stderr, unit='rows')
        failed = 0
        try:
            stream.write(model.CQRS_ID + '\n')
            for chunk in pipes.batches(queryset, batch):
                lines = []
                for instance in chunk:
                    try:
                        lines.append(pipes.dumps(instance.to_cqrs_dict(using=using)))
                    except Exception as exc:
                        failed += 1
                        self.stderr.write(f'pk={instance.pk!r} not dumped: {type(exc).__name__}: {exc}')
                if lines:
                    stream.write('\n'.join(lines) + '\n')
                bar.update(len(chunk), 'read')
        finally:
            bar.close()
            if stream is not self.stdout:
                stream.close()
        self.stderr.write(f'{bar.done - failed} {cqrs_id} rows dumped to {"stdout" if path == "-" else path}')
        if failed:
            raise CommandError(f'{failed} rows could not be dumped (see above); fix them or leave them out '
                               'with --filter, then dump again')
