"""Show the master's outbox, publish what is left in it now, or put set-aside events back in line."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery.master import follow as follower
from cqrs_celery.master import outbox


class Command(BaseCommand):
    help = ('status: events waiting and set aside in the outbox, per CQRS_ID, since when, and the last '
            'errors of set-aside events; relay: publish the waiting events now (what the beat relay '
            'does), oldest first, or with --follow keep publishing what the master commits (the publisher as '
            "a process of its own, for CQRS['master']['publisher'] = 'relay'); retry: put the set-aside events "
            'back in line, then relay.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('action', choices=['status', 'relay', 'retry'])
        parser.add_argument('--database', default='default', help='Database holding the outbox.')
        parser.add_argument('--dry-run', action='store_true',
                            help='relay, retry: only show the outbox, change and publish nothing.')
        parser.add_argument('--follow', action='store_true',
                            help='relay: keep publishing until stopped (SIGTERM or Ctrl-C), looking at the '
                                 'outbox again every --poll seconds when it is empty.')
        parser.add_argument('--poll', type=float, default=follower.POLL,
                            help=f'relay --follow: seconds between looks at an empty outbox (default {follower.POLL}).')

    def handle(self, *args: Any, action: str, database: str = 'default', dry_run: bool = False,
               follow: bool = False, poll: float = follower.POLL, **options: Any) -> None:
        if follow:
            if action != 'relay' or dry_run:
                raise CommandError('--follow goes with relay, without --dry-run.')
            self._follow(database, poll)
            return
        if action == 'status' or dry_run:
            self._status(database)
            return
        if action == 'retry':
            put_back = outbox.retry_set_aside(database)
            self.stdout.write(f'{put_back} set-aside events put back in line')
        try:
            published = outbox.relay(database, min_age=0)
        except Exception as exc:
            raise CommandError(f'relay failed: {exc}') from exc
        left = outbox.pending(database)
        self.stdout.write(self.style.SUCCESS(f'{published} events published, {left} left'))
        if left:
            aside = sum(row['count'] for row in outbox.status(database)['rows'] if row['set_aside'])
            raise CommandError(f'{left} events could not be published ({aside} set aside); see the log for the '
                               'reason, cqrs_outbox status for the errors, cqrs_outbox retry to try again')

    def _follow(self, database: str, poll: float) -> None:
        if not 0 < poll <= 60 or poll != poll:
            raise CommandError('--poll must be a number of seconds above 0 and at most 60.')
        stop = threading.Event()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
        self.stdout.write(f'publishing the outbox of {database} until stopped')
        self.stdout.flush()
        follower.follow(database, poll=poll, stop=stop)
        self.stdout.write(self.style.SUCCESS(f'stopped; {outbox.pending(database)} events left in the outbox'))

    def _status(self, database: str) -> None:
        status = outbox.status(database)
        counts: dict[str, dict[bool, tuple[int, Any]]] = {}
        for row in status['rows']:
            counts.setdefault(row['cqrs_id'], {})[row['set_aside']] = (row['count'], row['oldest'])
        waiting = sum(c.get(False, (0, None))[0] for c in counts.values())
        aside = sum(c.get(True, (0, None))[0] for c in counts.values())
        self.stdout.write(f'{waiting} events waiting and {aside} set aside in the outbox of {database}')
        for cqrs_id, by_state in counts.items():
            parts = [_count(*by_state.get(False, (0, None)), 'waiting'),
                     _count(*by_state.get(True, (0, None)), 'set aside')]
            line = f'  {cqrs_id}: {", ".join(parts)}'
            self.stdout.write(self.style.WARNING(line) if True in by_state else line)
        if status['errors']:
            self.stdout.write('Last errors of set-aside events (cqrs_outbox retry publishes them again):')
            for cqrs_id, pk_value, error in status['errors']:
                self.stdout.write(f'  {cqrs_id} pk={pk_value}: {error}')


def _count(count: int, oldest: Any, what: str) -> str:
    return f'{count} {what}' + (f' (oldest from {oldest.isoformat()})' if oldest else '')
