"""New replica rows of a group (replica/bulk.py ``insert_rows``): on SQLite one ``INSERT … VALUES``
per chunk, written value for value as ``bulk_create`` writes them; what it does not cover takes
``bulk_create``.

The tests run on an in-memory SQLite database of their own, so the SQLite path is checked whatever
database the suite runs on (CI: PostgreSQL, where ``insert_rows`` is ``bulk_create``).
"""

import datetime
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, connections
from django.db.models import Value
from django.db.models.functions import Lower
from django.db.utils import load_backend
from django.test.utils import CaptureQueriesContext

from cqrs_celery.replica import bulk
from tests.replica_app.models import ReplicaAllFields

ALIAS = 'bulk_insert_sqlite'
FIELDS = [field.attname for field in ReplicaAllFields._meta.concrete_fields]


@pytest.fixture
def sqlite(django_db_blocker: Any) -> Iterator[str]:
    settings = connections.configure_settings({'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'},
                                               ALIAS: {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}})
    wrapper = load_backend(settings[ALIAS]['ENGINE']).DatabaseWrapper(settings[ALIAS], ALIAS)
    with django_db_blocker.unblock():
        connections[ALIAS] = wrapper
        try:
            with wrapper.schema_editor() as editor:
                editor.create_model(ReplicaAllFields)
            yield ALIAS
        finally:
            wrapper.close()
            del connections[ALIAS]


def rows() -> list[ReplicaAllFields]:
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    made = [ReplicaAllFields(id=uuid.UUID(int=i + 1), cqrs_revision=i, cqrs_updated=moment + datetime.timedelta(days=i),
                             big=2 ** 40 + i, small=-i, positive=i, flag=i % 2 == 0, char=f'char {i} ü', text='t' * i,
                             slug=f'slug-{i}', email=f'u{i}@example.com', url=f'https://example.com/{i}',
                             ip='2001:db8::1' if i % 2 else '10.0.0.1', decimal=decimal.Decimal(f'{i}.000000000000001'),
                             floating=i / 3, day=datetime.date(2024, 1, 1 + i), moment=moment,
                             clock=datetime.time(1, 2, i), duration=datetime.timedelta(seconds=i, microseconds=7),
                             token=uuid.UUID(int=1000 + i), blob=bytes([i, 0, 255]),
                             document={'i': i, 'list': [1, None, 'x']}, author_id=i)
            for i in range(7)]
    made.append(ReplicaAllFields(id=uuid.UUID(int=99), cqrs_revision=0, cqrs_updated=moment))  # every other field NULL
    return made


def stored(alias: str) -> list[tuple]:
    values = ReplicaAllFields.objects.using(alias).order_by('id').values_list(*FIELDS)
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in values]


def test_new_rows_read_back_as_bulk_create_writes_them_chunk_after_chunk(sqlite: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ReplicaAllFields.objects.using(sqlite).bulk_create(rows())
    expected = stored(sqlite)
    ReplicaAllFields.objects.using(sqlite).all().delete()

    width = len(FIELDS)
    monkeypatch.setattr(bulk, '_query_params', lambda connection: width * 3)  # three rows per statement
    objs = rows()
    with CaptureQueriesContext(connections[sqlite]) as queries:
        bulk.insert_rows(ReplicaAllFields, objs, sqlite)
    assert [q['sql'].count('), (') + 1 for q in queries.captured_queries if q['sql'].startswith('INSERT')] == [3, 3, 2]

    assert stored(sqlite) == expected
    assert len(expected) == 8 and expected[0][FIELDS.index('char')] == 'char 0 ü'
    assert all(not obj._state.adding and obj._state.db == sqlite for obj in objs)


def test_large_groups_go_in_statements_of_at_most_a_thousand_rows_within_the_parameter_limit(sqlite: str) -> None:
    moment = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    objs = [ReplicaAllFields(id=uuid.UUID(int=i + 1), cqrs_revision=0, cqrs_updated=moment, big=i) for i in range(2500)]
    per_statement = min(bulk.CHUNK_ROWS, bulk._query_params(connections[sqlite]) // len(FIELDS))
    with CaptureQueriesContext(connections[sqlite]) as queries:
        bulk.insert_rows(ReplicaAllFields, objs, sqlite)
    inserts = [q['sql'] for q in queries.captured_queries if q['sql'].startswith('INSERT')]
    assert len(inserts) == -(-len(objs) // per_statement) >= 3
    bigs = ReplicaAllFields.objects.using(sqlite).order_by('big').values_list('big', flat=True)
    assert list(bigs) == list(range(2500))


def test_a_value_that_is_an_expression_takes_bulk_create(sqlite: str) -> None:
    objs = rows()[:2]
    objs[1].char = Lower(Value('SHOUTED'))
    bulk.insert_rows(ReplicaAllFields, objs, sqlite)
    assert sorted(ReplicaAllFields.objects.using(sqlite).values_list('char', flat=True)) == ['char 0 ü', 'shouted']


def test_a_primary_key_already_there_raises_so_the_group_falls_back_to_one_row_at_a_time(sqlite: str) -> None:
    bulk.insert_rows(ReplicaAllFields, rows()[:1], sqlite)
    with pytest.raises(IntegrityError):
        bulk.insert_rows(ReplicaAllFields, rows()[:2], sqlite)
