"""Replica side, end of the deleted-rows pipe: delete here the rows the master no longer has."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.management import pipes
from cqrs_celery.replica.apply import Outcome
from cqrs_celery.replica.group import apply_rows


class Command(BaseCommand):
    help = ('Read cqrs_deleted_diff_master\'s output on stdin and delete the listed rows of this replica. '
            'Each goes through the replica\'s delete path at its stored revision: a tombstone is kept (a late '
            'message cannot bring the row back), and a row changed since the diff is left alone.')

    stealth_options = ('stdin',)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--dry-run', action='store_true', help='Count the rows; delete nothing.')
        parser.add_argument('--database', default=None, help='Database to read from (default: the router\'s).')

    def handle(self, *args: Any, dry_run: bool = False, database: str | None = None, **options: Any) -> None:
        stream = pipes.input_stream(options)
        cqrs_id, _ = pipes.header(stream, 'cqrs_deleted_sync_replica')
        model = pipes.replica_model(cqrs_id)
        if model.CQRS_NO_DB_OPERATIONS:
            raise CommandError(f'{cqrs_id}: {model.__qualname__} keeps no table, so it has no rows to delete.')
        using = database or router.db_for_read(model)
        pk_name = _master_pk_name(model)
        counts: dict[str, int] = {}
        failed = 0
        for package in pipes.packages(stream, 'cqrs_deleted_sync_replica'):
            given = pipes.json_pks(model, package)
            stored = model._default_manager.using(using).filter(pk__in=list(given)).values_list('pk', 'cqrs_revision')
            envelopes = [Envelope(signal_type=SignalType.DELETE, cqrs_id=cqrs_id, instance_pk=given[pk],
                                  instance_data={pk_name: given[pk], FIELD_REVISION: revision})
                         for pk, revision in stored]
            if dry_run:
                counts['would be deleted'] = counts.get('would be deleted', 0) + len(envelopes)
                continue
            for envelope, result in zip(envelopes, apply_rows(model, envelopes) if envelopes else [], strict=True):
                if isinstance(result, Exception):
                    failed += 1
                    self.stderr.write(f'pk={envelope.instance_pk!r} not deleted: {type(result).__name__}: {result}')
                else:
                    outcome = 'deleted' if result.outcome == Outcome.DELETED else f'{result.outcome.value} (kept)'
                    counts[outcome] = counts.get(outcome, 0) + 1
        summary = ', '.join(f'{count} {what}' for what, count in sorted(counts.items())) or 'nothing to delete'
        self.stdout.write(f'{cqrs_id}: {summary}')
        if failed:
            raise CommandError(f'{failed} rows could not be deleted (see above); run the pipe again once fixed')


def _master_pk_name(model: Any) -> str:
    """The name the master's data gives this replica's pk (through ``CQRS_MAPPING``)."""
    pk_field = model._meta.pk
    for source, target in (model.CQRS_MAPPING or {}).items():
        if target in (pk_field.name, pk_field.attname):
            return str(source)
    return str(pk_field.name)
