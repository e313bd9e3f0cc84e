"""Show the master's outbox, or publish what is left in it now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Min

from cqrs_celery.master import outbox
from cqrs_celery.models import OutboxEvent


class Command(BaseCommand):
    help = ('status: how many events wait in the outbox and since when; '
            'relay: publish them now (what the beat relay does), oldest first.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('action', choices=['status', 'relay'])
        parser.add_argument('--database', default='default', help='Database holding the outbox.')
        parser.add_argument('--dry-run', action='store_true', help='relay: only show what would be published.')

    def handle(self, *args: Any, action: str, database: str = 'default', dry_run: bool = False,
               **options: Any) -> None:
        events = OutboxEvent._default_manager.using(database)
        count = events.count()
        oldest = events.aggregate(oldest=Min('created'))['oldest']
        if action == 'status' or dry_run:
            since = f' (oldest from {oldest.isoformat()})' if oldest else ''
            self.stdout.write(f'{count} events waiting in the outbox of {database}{since}')
            return
        try:
            published = outbox.relay(database, min_age=0)
        except Exception as exc:
            raise CommandError(f'relay failed: {exc}') from exc
        left = events.count()
        self.stdout.write(self.style.SUCCESS(f'{published} events published, {left} left'))
        if left:
            raise CommandError(f'{left} events could not be published; see the log for the reason')
