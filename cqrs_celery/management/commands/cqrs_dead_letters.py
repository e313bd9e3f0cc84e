"""Inspect and handle this replica service's dead letters: dump, retry, purge."""

from __future__ import annotations

from typing import Any

import ujson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery.conf import get_settings
from cqrs_celery.replica import dead_letters


class Command(BaseCommand):
    help = ('dump: print every dead letter as one JSON line (the queue is left as it was); '
            'retry: send dead envelopes back to this service\'s queue with attempts reset; '
            'purge: delete dead letters (--expired: only those older than dead_message_ttl).')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('action', choices=['dump', 'retry', 'purge'])
        parser.add_argument('--limit', type=int, default=None, help='Handle at most this many letters.')
        parser.add_argument('--expired', action='store_true', help='purge: only letters past dead_message_ttl.')
        parser.add_argument('--dry-run', action='store_true', help='retry/purge: only count what would be done.')

    def handle(self, *args: Any, action: str, limit: int | None = None, expired: bool = False,
               dry_run: bool = False, **options: Any) -> None:
        settings = get_settings()
        if not settings.queue:
            raise CommandError("CQRS['queue'] is not set: only a replica service has dead letters.")
        app = settings.celery_app()
        try:
            if action == 'dump' or dry_run:
                found = dead_letters.letters(app, limit)
                if action == 'dump':
                    for letter in found:
                        self.stdout.write(ujson.dumps(letter, ensure_ascii=False, sort_keys=True))
                else:
                    self.stdout.write(f'dry run: {len(found)} dead letters in {settings.dead_letter_queue} '
                                      f'would be handled by {action}')
                return
            if action == 'retry':
                sent, kept = dead_letters.retry(app, limit)
                self.stdout.write(self.style.SUCCESS(f'{sent} envelopes sent back to {settings.queue}'))
                if kept:
                    self.stdout.write(self.style.WARNING(f'{kept} letters without an envelope were kept'))
                return
            removed = dead_letters.purge(app, expired_only=expired)
            self.stdout.write(self.style.SUCCESS(f'{removed} dead letters removed from {settings.dead_letter_queue}'))
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f'{action} failed on {settings.dead_letter_queue}: {exc}') from exc
