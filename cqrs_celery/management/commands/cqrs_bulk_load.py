"""Load a cqrs_bulk_dump file into this service's replica model, with the revision rules (no broker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TextIO

import ujson
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, router, transaction

from cqrs_celery.constants import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.management import pipes
from cqrs_celery.management.progress import Progress
from cqrs_celery.replica import apply as single
from cqrs_celery.replica.apply import Outcome
from cqrs_celery.replica.group import apply_rows


def _flag(value: str) -> bool:
    """django-cqrs took ``--clear <anything>``; ``--clear`` alone works too, ``--clear false`` does not clear."""
    return value.strip().lower() not in ('', '0', 'false', 'no', 'off')


class Command(BaseCommand):
    help = ('Load a cqrs_bulk_dump file into the replica model of its CQRS_ID, in batches, as SYNCs: the '
            'revision rules apply (a row older than the stored one or than its tombstone is skipped).')

    stealth_options = ('stdin',)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--input', '-i', required=True, help='Dump file to load (- for stdin).')
        parser.add_argument('--clear', '-c', nargs='?', const=True, default=False, type=_flag,
                            help='Delete the replica\'s rows of this CQRS_ID first.')
        parser.add_argument('--batch', '-b', type=int, default=10000, help='Rows per transaction (default 10000).')
        parser.add_argument('--progress', '-p', action='store_true',
                            help='Show a progress bar (the default on a terminal).')

    def handle(self, *args: Any, input: str, clear: bool = False, batch: int = 10000, progress: bool = False,
               **options: Any) -> None:
        if batch < 1:
            raise CommandError('--batch must be at least 1.')
        if input != '-' and not os.path.isfile(input):
            raise CommandError(f'{input} does not exist (give the file cqrs_bulk_dump wrote, or - for stdin).')
        try:
            stream = pipes.input_stream(options) if input == '-' else open(input, encoding='utf-8')  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f'cannot read {input}: {exc}') from exc
        try:
            self._load(stream, input, clear, batch, progress)
        finally:
            if input != '-':
                stream.close()

    def _load(self, stream: TextIO, name: str, clear: bool, batch: int, progress: bool) -> None:
        try:
            cqrs_id = stream.readline().strip()
        except UnicodeDecodeError as exc:
            raise CommandError(f'{name} is not a text file written by cqrs_bulk_dump: {exc}') from exc
        if not cqrs_id:
            raise CommandError(f'{name} is empty: it has no CQRS_ID line (was it written by cqrs_bulk_dump?)')
        model = pipes.replica_model(cqrs_id)
        if clear and not model.CQRS_NO_DB_OPERATIONS:
            try:
                with transaction.atomic(using=router.db_for_write(model)):
                    model._default_manager.all().delete()
            except DatabaseError as exc:
                raise CommandError(f'--clear: deleting the {model._meta.label} rows failed: {exc}') from exc
        bar = Progress(None, wanted=progress, lines=self.stderr, unit='rows')
        counts: dict[str, int] = {}
        failed = 0
        try:
            for chunk in _chunks(stream, batch):
                envelopes, numbers = [], []
                for number, line in chunk:
                    try:
                        envelopes.append(_envelope(model, line))
                        numbers.append(number)
                    except ValueError as exc:
                        failed += 1
                        self.stderr.write(f'line {number} not loaded: {exc}')
                for number, result in zip(numbers, self._apply(model, envelopes), strict=True):
                    if isinstance(result, Exception):
                        failed += 1
                        self.stderr.write(f'line {number} not loaded: {type(result).__name__}: {result}')
                    else:
                        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
                bar.update(len(chunk), 'read')
        except UnicodeDecodeError as exc:
            raise CommandError(f'{name} is not a text file written by cqrs_bulk_dump: {exc}') from exc
        finally:
            bar.close()
        loaded = sum(counts.get(o.value, 0) for o in (Outcome.CREATED, Outcome.UPDATED, Outcome.HANDLED))
        details = ', '.join(f'{count} {outcome}' for outcome, count in sorted(counts.items()))
        self.stderr.write(f'{loaded} {cqrs_id} rows loaded' + (f' ({details})' if details else ''))
        if failed:
            raise CommandError(f'{failed} lines of {name} could not be loaded (see above); fix them and load '
                               'the file again (rows already loaded are skipped as duplicates of their revision)')

    @staticmethod
    def _apply(model: Any, envelopes: list[Envelope]) -> list[Any]:
        if not envelopes:
            return []
        if model.CQRS_NO_DB_OPERATIONS:
            results: list[Any] = []
            for envelope in envelopes:
                try:
                    results.append(single.apply_custom(model, envelope))
                except Exception as exc:
                    results.append(exc)
            return results
        return apply_rows(model, envelopes)


def _chunks(stream: TextIO, size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for number, line in enumerate(stream, start=2):
        if not line.strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _envelope(model: Any, line: str) -> Envelope:
    """A SYNC envelope of one dumped row; ``ValueError`` when the line is not one."""
    try:
        data = ujson.loads(line)
    except ValueError as exc:
        raise ValueError(f'not JSON ({exc})') from exc
    if not isinstance(data, dict):
        raise ValueError('not a JSON object')
    if model.CQRS_NO_DB_OPERATIONS:  # a model without a table: its own cqrs_save reads the data
        return Envelope(signal_type=SignalType.SYNC, cqrs_id=model.CQRS_ID, instance_pk=data.get('id'),
                        instance_data=data)
    pk = single.master_pk(model, data)
    if pk is None:
        raise ValueError(f'no primary key ({model._meta.pk.name}) in the row')
    return Envelope(signal_type=SignalType.SYNC, cqrs_id=model.CQRS_ID, instance_pk=pk, instance_data=data)
