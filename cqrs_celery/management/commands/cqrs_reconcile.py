"""Run a reconciliation now, for one CQRS_ID and one replica queue, and print the drift it found."""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router

from cqrs_celery.conf import get_settings
from cqrs_celery.exceptions import CQRSError
from cqrs_celery.models import ReconciliationRun
from cqrs_celery.reconcile import replica_side, transport
from cqrs_celery.reconcile.master_side import KINDS
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry


class Command(BaseCommand):
    help = ('Compare one replica with its master now and repair the drift (or, with --dry-run, only print it). '
            'Run it on the replica service (its own queue), or on the master service with --queue. The master\'s '
            'worker and the replica\'s worker must be running: the steps travel as Celery messages.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--cqrs-id', '-cid', required=True, help='CQRS_ID of the model to reconcile.')
        parser.add_argument('--queue', '-q', default=None,
                            help="The replica queue (default: this service's CQRS['queue']).")
        parser.add_argument('--dry-run', action='store_true', help='Find and print the drift; repair nothing.')
        parser.add_argument('--content', action='store_true',
                            help='Compare field content too, not only revisions (reads every row on both sides).')
        parser.add_argument('--timeout', type=float, default=120.0,
                            help='Seconds to wait for the run to finish (default 120).')

    def handle(self, *args: Any, cqrs_id: str, queue: str | None = None, dry_run: bool = False,
               content: bool = False, timeout: float = 120.0, **options: Any) -> None:
        own = get_settings().queue
        run = uuid.uuid4().hex
        body = {'step': 'start', 'cqrs_id': cqrs_id, 'content': content, 'dry_run': dry_run, 'manual': True,
                'run': run}
        try:
            if cqrs_id in ReplicaRegistry and (queue is None or queue == own):
                if not own:
                    raise CommandError("This service has no CQRS['queue']: give the replica's queue with --queue "
                                       '(on the master service) or set CQRS["queue"].')
                side, using = 'replica', router.db_for_write(ReplicaRegistry.get(cqrs_id))
                if not replica_side.start(body):
                    raise CommandError(f'{cqrs_id} is not reconciled here (CQRS_RECONCILE = False, or no table).')
                queue = own
            elif cqrs_id in MasterRegistry:
                if not queue:
                    raise CommandError('On the master service, name the replica with --queue <its CQRS["queue"]>.')
                side, using = 'master', router.db_for_write(MasterRegistry.get(cqrs_id))
                transport.to_replica(queue, body)
            else:
                raise CommandError(f'There is no replica model (nor master model) with CQRS_ID {cqrs_id!r} in this '
                                   f'service (replica: {", ".join(ReplicaRegistry.ids()) or "none"}; master: '
                                   f'{", ".join(MasterRegistry.ids()) or "none"}).')
        except CQRSError as exc:
            raise CommandError(f'Could not start the reconciliation: {exc}') from exc
        self.stdout.write(f'reconciling {cqrs_id} with {queue} (run {run})…')
        done = self._wait(run, side, using, timeout)
        if done is None:
            raise CommandError(
                f'No result after {timeout:g}s. Check that the master\'s worker consumes '
                f'{get_settings().replica.master_queue(cqrs_id) or "the default Celery queue"} '
                f'(CQRS["replica"]["reconcile_master_queue"]) and that the replica worker of {queue} runs; '
                f'a run started less than reconcile_min_interval ago is not repeated.')
        self._print(done)

    def _wait(self, run: str, side: str, using: str, timeout: float) -> ReconciliationRun | None:
        runs = ReconciliationRun._default_manager.using(using)
        deadline = time.monotonic() + timeout
        while True:
            done = runs.filter(run_id=run, side=side).exclude(finished_at=None).first()
            if done is not None and (side == 'replica' or done.error or done.messages):
                return done
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)

    def _print(self, run: ReconciliationRun) -> None:
        details = run.details or {}
        for kind in KINDS:
            count = getattr(run, kind)
            keys = details.get(kind) or []
            shown = f' ({", ".join(map(str, keys))}{", …" if len(keys) < count else ""})' if count else ''
            self.stdout.write(f'{kind}: {count}{shown}')
        if run.error:
            raise CommandError(f'The run failed: {run.error}')
        if run.dry_run:
            self.stdout.write(self.style.SUCCESS(f'{run.drift} rows differ; nothing repaired (dry run)'))
        else:
            held = f', {run.held_back} held back (still differing after a recent repair)' if run.held_back else ''
            self.stdout.write(self.style.SUCCESS(f'{run.repaired} rows repaired{held}; {run.buckets_differing} of '
                                                 f'{run.buckets} buckets differed; {run.messages} messages, '
                                                 f'{run.bytes} bytes'))
