"""Show, per CQRS_ID, rows, outbox backlog, unroutable publishes, reconciliation, and this service's queues."""

from __future__ import annotations

from typing import Any

import ujson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery import status

COLUMNS = [('cqrs_id', 'CQRS_ID'), ('master_rows', 'master rows'), ('replica_rows', 'replica rows'),
           ('outbox_waiting', 'outbox'), ('outbox_set_aside', 'set aside'), ('outbox_oldest_age', 'oldest (s)'),
           ('events_written_by', 'events by'),
           ('unroutable', 'unroutable'), ('dead_letters', 'dead letters'),
           ('last_reconciliation', 'last reconciliation'), ('drift_found', 'drift')]


class Command(BaseCommand):
    help = ('Per CQRS_ID of this service: master and replica rows, outbox events waiting and set aside (age of '
            'the oldest), who writes the outbox events (a database trigger or the save), unroutable publishes, '
            'last reconciliation and the drift it found; then the depth of this service\'s replica and '
            'dead-letter queues.')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--json', action='store_true', help='Print one JSON object instead of a table.')
        parser.add_argument('--database', default='default', help='Database holding the outbox.')
        parser.add_argument('--dead-letters', action='store_true',
                            help='Count dead letters per CQRS_ID (reads every letter and puts it back in order).')

    def handle(self, *args: Any, json: bool = False, database: str = 'default', dead_letters: bool = False,
               **options: Any) -> None:
        try:
            found = status.collect(database, dead_letters_by_id=dead_letters)
        except Exception as exc:
            raise CommandError(f'cannot read the status: {exc} (are the migrations applied? '
                               'run manage.py migrate cqrs_celery)') from exc
        if json:
            self.stdout.write(ujson.dumps(found, ensure_ascii=False, indent=2))
            return
        columns = [(key, title) for key, title in COLUMNS if any(key in row for row in found['models'])]
        table = [[title for _, title in columns]]
        table += [[_cell(row.get(key)) for key, _ in columns] for row in found['models']]
        if len(table) == 1:
            self.stdout.write('no CQRS models in this service')
        else:
            widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
            for line in table:
                self.stdout.write('  '.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                                  .rstrip())
        for queue in found['queues']:
            what = 'letters' if queue['kind'] == 'dead-letter' else 'messages waiting'
            self.stdout.write(f"{queue['kind']} queue {queue['queue']}: {_cell(queue['messages'])} {what}")


def _cell(value: Any) -> str:
    return '-' if value is None else str(value)
