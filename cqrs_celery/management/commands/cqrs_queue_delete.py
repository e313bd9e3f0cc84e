"""Decommission a replica queue: unbind it from every exchange and delete it (and its dead letters)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery import decommission, topology
from cqrs_celery.conf import QUEUE_NAME_RE, get_settings


class Command(BaseCommand):
    help = ("Decommission a replica service's queue: unbind it from the models' exchanges and delete it with its "
            "messages, so changes stop piling up for a service that is gone. --dead-letters deletes its dead-letter "
            "queue too; --dry-run only shows what would go. Stop the service's workers first (they declare the "
            "queue again when they start).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('queue', help="The replica queue to delete (that service's CQRS['queue']).")
        parser.add_argument('--dead-letters', action='store_true',
                            help='Also delete its dead-letter queue (dead_letter_<queue>).')
        parser.add_argument('--dry-run', action='store_true', help='Only show what would be deleted.')
        parser.add_argument('--force', action='store_true',
                            help='Delete even when the queue holds messages or has consumers.')

    def handle(self, *args: Any, queue: str, dead_letters: bool = False, dry_run: bool = False,
               force: bool = False, **options: Any) -> None:
        if not QUEUE_NAME_RE.fullmatch(queue):
            raise CommandError(f'{queue!r} is not a queue name (letters, digits and . _ - :).')
        settings = get_settings()
        names = [queue]
        if dead_letters:
            own = queue == settings.queue and settings.dead_letter_queue
            names.append(own or topology.dead_letter_queue_name(queue))
        try:
            app = settings.celery_app()
            states = [decommission.inspect(app, name) for name in names]
        except Exception as exc:
            raise CommandError(f'cannot inspect {", ".join(names)} on the broker: {exc}') from exc
        for state in states:
            self.stdout.write(self._describe(state))
        present = [state for state in states if state.exists]
        if not present:
            self.stdout.write('nothing to delete')
            return
        if dry_run:
            self.stdout.write(self.style.WARNING(f'dry run: {", ".join(s.name for s in present)} would be deleted'))
            return
        busy = [state for state in present if state.messages or state.consumers]
        if busy and not force:
            raise CommandError(
                '; '.join(f'{s.name} holds {s.messages} messages' + (f' and has {s.consumers} consumers'
                                                                    if s.consumers else '') for s in busy)
                + '. Stop the workers of that service, then run again with --force to delete them.')
        for state in present:
            try:
                decommission.delete(app, state.name)
            except Exception as exc:
                raise CommandError(f'deleting {state.name} failed: {exc}') from exc
            self.stdout.write(self.style.SUCCESS(f'deleted {state.name} ({state.messages} messages)'))

    def _describe(self, state: decommission.QueueState) -> str:
        if not state.exists:
            return f'queue {state.name}: does not exist'
        if state.bindings is None:
            bound = 'its bindings go with it'
        elif state.bindings:
            bound = 'bound to ' + ', '.join(f'{exchange} ({key})' for exchange, key in state.bindings)
        else:
            bound = 'not bound'
        consumers = f', {state.consumers} consumers' if state.consumers else ''
        return f'queue {state.name}: {state.messages} messages{consumers}, {bound}'
