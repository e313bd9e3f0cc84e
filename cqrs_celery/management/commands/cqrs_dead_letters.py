"""Inspect and handle this replica service's dead letters: dump, retry, purge."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery.conf import get_settings
from cqrs_celery.replica import dead_letters


class Command(BaseCommand):
    help = ('dump: print every dead letter as one line of strict JSON (the queue is left as it was); '
            'retry: send dead envelopes back to this service\'s queue with attempts reset and their expiry '
            'cleared (or extended with --expires-in); '
            'purge: delete dead letters (--expired: only those older than dead_message_ttl).')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('action', choices=['dump', 'retry', 'purge'])
        parser.add_argument('--limit', type=int, default=None, help='Handle at most this many letters.')
        parser.add_argument('--expired', action='store_true', help='purge: only letters past dead_message_ttl.')
        parser.add_argument('--expires-in', type=float, default=None, metavar='SECONDS',
                            help='retry: envelopes expire this many seconds from now (default: never).')
        parser.add_argument('--dry-run', action='store_true', help='retry/purge: only count what would be done.')

    def handle(self, *args: Any, action: str, limit: int | None = None, expired: bool = False,
               expires_in: float | None = None, dry_run: bool = False, **options: Any) -> None:
        settings = get_settings()
        if not settings.queue:
            raise CommandError("CQRS['queue'] is not set: only a replica service has dead letters.")
        if limit is not None and limit < 0:
            raise CommandError('--limit must not be negative.')
        if expires_in is not None and not 0 < expires_in <= 10 * 365 * 24 * 3600:
            raise CommandError('--expires-in must be a number of seconds above 0 (at most ten years).')
        app = settings.celery_app()
        try:
            if action == 'dump':
                self._dump(app, limit)
            elif action == 'retry':
                self._retry(app, limit, expires_in, dry_run)
            elif dry_run:
                count = dead_letters.would_purge(app, expired_only=expired)
                self.stdout.write(f'dry run: {count} dead letters would be removed from {settings.dead_letter_queue}')
            else:
                removed = dead_letters.purge(app, expired_only=expired)
                self.stdout.write(self.style.SUCCESS(
                    f'{removed} dead letters removed from {settings.dead_letter_queue}'))
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f'{action} failed on {settings.dead_letter_queue}: {exc}') from exc

    def _dump(self, app: Any, limit: int | None) -> None:
        found = dead_letters.letters(app, limit)
        for letter in found:
            self.stdout.write(dead_letters.as_json_line(letter))
        if not found:  # on stderr: stdout stays one JSON document per line
            self.stderr.write(f'no dead letters in {get_settings().dead_letter_queue}')

    def _retry(self, app: Any, limit: int | None, expires_in: float | None, dry_run: bool) -> None:
        done = dead_letters.retry(app, limit, expires_in=expires_in, dry_run=dry_run)
        queue = get_settings().queue
        if dry_run:
            self.stdout.write(f'dry run: {done.sent} envelopes would be sent back to {queue}')
        else:
            self.stdout.write(self.style.SUCCESS(f'{done.sent} envelopes sent back to {queue}'))
        verb = 'would be' if dry_run else 'were'
        if done.without_envelope:
            self.stdout.write(self.style.WARNING(f'{done.without_envelope} letters without an envelope {verb} kept'))
        if done.other_service:
            self.stdout.write(self.style.WARNING(
                f'{done.other_service} letters recorded by another service\'s queue {verb} kept'))
