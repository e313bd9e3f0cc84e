"""Re-send master rows as SYNC envelopes, in batches: to every replica, or to one replica queue."""

from __future__ import annotations

from typing import Any

import ujson
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import SignalType
from cqrs_celery.exceptions import CQRSError, UnknownCQRSIdError
from cqrs_celery.management.progress import progress_bar
from cqrs_celery.master.publish import build_envelope
from cqrs_celery.producer import send_batch
from cqrs_celery.registry import MasterRegistry


class Command(BaseCommand):
    help = ('Publish the current state of master rows as SYNC envelopes (batched messages), to every replica '
            'or, with --queue, to one replica service only.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--cqrs-id', '-cid', required=True, help='CQRS_ID of the master model.')
        parser.add_argument('--filter', '-f', default=None,
                            help='Queryset filter as a JSON object, e.g. \'{"id__gte": 100}\'.')
        parser.add_argument('--queue', '-q', default=None, help='Send only to this replica queue.')
        parser.add_argument('--batch', '-b', type=int, default=1000, help='Rows read per query (default 1000).')
        parser.add_argument('--progress', '-p', action='store_true',
                            help='Show a progress bar (the default on a terminal).')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')
        parser.add_argument('--dry-run', action='store_true', help='Count the rows; publish nothing.')
        parser.add_argument('--force', action='store_true',
                            help='With --queue: apply even where that replica holds a higher revision '
                                 '(repairs a replica that is ahead of its master, e.g. after a restore).')

    def handle(self, *args: Any, cqrs_id: str, filter: str | None = None, queue: str | None = None,
               batch: int = 1000, progress: bool = False, database: str | None = None, dry_run: bool = False,
               force: bool = False, **options: Any) -> None:
        try:
            model = MasterRegistry.get(cqrs_id)
        except UnknownCQRSIdError as exc:
            raise CommandError(str(exc)) from exc
        if batch < 1:
            raise CommandError('--batch must be at least 1.')
        if force and not queue:
            raise CommandError('--force needs --queue: a forced sync goes to one replica service.')
        using = database or router.db_for_read(model)
        queryset = model.relate_cqrs_serialization(model._base_manager.using(using))
        if filter:
            try:
                lookups = ujson.loads(filter)
                if not isinstance(lookups, dict):
                    raise ValueError('it must be a JSON object')
                queryset = queryset.filter(**lookups)
                total = queryset.count()
            except Exception as exc:
                raise CommandError(f'--filter {filter!r} is not a usable filter: {exc}') from exc
        else:
            total = queryset.count()
        target = f'queue {queue}' if queue else 'every replica'
        if dry_run:
            self.stdout.write(f'{total} {cqrs_id} rows would be sent to {target}')
            return
        bar = self._progress_bar(total, progress)
        sent = self._send_all(queryset.order_by('pk'), using, queue, batch, bar, force)
        if bar is not None:
            bar.close()
        self.stdout.write(self.style.SUCCESS(f'{sent} {cqrs_id} rows sent to {target}'))

    def _send_all(self, queryset: Any, using: str, queue: str | None, batch: int, bar: Any, force: bool) -> int:
        size = get_settings().master.publish_batch_size
        sent = 0
        last = None
        while True:
            chunk = list((queryset if last is None else queryset.filter(pk__gt=last))[:batch])
            if not chunk:
                return sent
            last = chunk[-1].pk
            envelopes = [build_envelope(obj, SignalType.SYNC, using, queue=queue, forced=force)
                         for obj in chunk if obj.is_sync_instance()]
            for start in range(0, len(envelopes), size):
                try:
                    send_batch(envelopes[start:start + size])
                except CQRSError as exc:
                    raise CommandError(f'publishing failed after {sent} rows (continue with --filter '
                                       f'\'{{"pk__gt": {ujson.dumps(envelopes[start].instance_pk)}}}\'): '
                                       f'{exc}') from exc
                sent += len(envelopes[start:start + size])
            if bar is not None:
                bar.update(len(chunk))
            else:
                self.stdout.write(f'{sent} rows sent')

    def _progress_bar(self, total: int, wanted: bool) -> Any:
        return progress_bar(total, wanted)
