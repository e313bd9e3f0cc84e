"""Print this service's broker topology; with ``--declare``, create it on the broker."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.replica import queues


class Command(BaseCommand):
    help = ("Show the exchanges this service publishes to and its replica queue with its bindings; "
            "--declare creates them, so a replica's queue exists before its first worker runs.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--declare', action='store_true', help='Declare the exchanges and queue.')
        parser.add_argument('--dry-run', action='store_true', help='With --declare: only show what would be done.')

    def handle(self, *args: Any, declare: bool = False, dry_run: bool = False, **options: Any) -> None:
        try:
            app = get_settings().celery_app()
            broker = app.connection_for_write().as_uri()
            exchanges = queues.master_exchanges(app)
            queue = queues.replica_queue(app)
        except Exception as exc:
            raise CommandError(f'cannot read the topology: {exc}') from exc
        self.stdout.write(f'broker: {broker}')
        self.stdout.write(self.style.MIGRATE_HEADING('master exchanges (this service publishes):'))
        for exchange in exchanges:
            self.stdout.write(f'  {exchange.name}  type={exchange.type}  durable={exchange.durable}')
        if not exchanges:
            self.stdout.write('  (none)')
        self.stdout.write(self.style.MIGRATE_HEADING('replica queue (this service consumes):'))
        if queue is None:
            self.stdout.write('  (none)')
        else:
            kind = (queue.queue_arguments or {}).get('x-queue-type', 'classic')
            self.stdout.write(f'  {queue.name}  durable={queue.durable}  type={kind}')
            for row in topology.describe(queue):
                self.stdout.write(f"    <- {row['exchange']}  type={row['type']}  routing_key={row['routing_key']}")
            for problem in queues.queue_problems(app):
                self.stdout.write(self.style.ERROR(f'  problem: {problem}'))
        if not declare:
            return
        if dry_run:
            self.stdout.write(self.style.WARNING('dry run: nothing declared'))
            return
        try:
            done = queues.declare(app)
        except Exception as exc:
            raise CommandError(f'declaring on {broker} failed: {exc}') from exc
        for line in done:
            self.stdout.write(self.style.SUCCESS(f'declared {line}'))
