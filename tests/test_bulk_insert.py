"""New replica rows of a group (replica/bulk.py ``insert_rows``): on SQLite one ``INSERT … VALUES``
per chunk, on PostgreSQL one ``INSERT … SELECT * FROM UNNEST`` of array texts, written value for
value as ``bulk_create`` writes them; what neither covers takes ``bulk_create``.

The SQLite tests run on an in-memory SQLite database of their own, so that path is checked whatever
database the suite runs on; the PostgreSQL tests run when the suite does (CI).
"""

import datetime
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, connections, models
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


postgres_only = pytest.mark.skipif(connections['default'].vendor != 'postgresql', reason='the PostgreSQL path')

#: Text an array literal must escape or quote: quotes, backslashes, braces, commas, NULL, blanks.
AWKWARD = ['say "hi"', 'back\\slash\\', '{a,b}', 'NULL', '', ' padded ', 'comma, and } brace', 'ünï ☃ 😀',
           'line\nbreak', "it's"]


def unnest_rows() -> list[ReplicaAllFields]:
    """``rows()`` without the values array text does not take (float, duration, bytes, JSON, IP)."""
    made = rows()
    for i, obj in enumerate(made):
        obj.floating = obj.duration = obj.blob = obj.document = obj.ip = None
        if i < len(AWKWARD):
            obj.char, obj.text = AWKWARD[i], AWKWARD[-1 - i]
    made[1].moment = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    return made


def inserted_with(objs: list[ReplicaAllFields]) -> tuple[list[tuple], list[str]]:
    """What ``insert_rows`` stores of ``objs`` (read back), and the INSERT statements it sent."""
    with CaptureQueriesContext(connections['default']) as queries:
        bulk.insert_rows(ReplicaAllFields, objs, 'default')
    return stored('default'), [q['sql'] for q in queries.captured_queries if q['sql'].startswith('INSERT')]


@postgres_only
@pytest.mark.django_db
def test_postgresql_new_rows_go_as_one_unnest_of_array_texts_and_read_back_as_bulk_create_writes_them() -> None:
    ReplicaAllFields.objects.bulk_create(unnest_rows())
    expected = stored('default')
    ReplicaAllFields.objects.all().delete()

    objs = unnest_rows()
    found, inserts = inserted_with(objs)

    assert found == expected
    assert len(inserts) == 1 and 'UNNEST(' in inserts[0] and '::varchar[]' in inserts[0]
    assert [row[FIELDS.index('char')] for row in found][:len(AWKWARD)] == AWKWARD[:len(found)]
    assert all(not obj._state.adding and obj._state.db == 'default' for obj in objs)


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize('field, value', [('floating', 1.5), ('duration', datetime.timedelta(seconds=3)),
                                          ('blob', b'\x00\xff'), ('document', {'a': [1]}), ('ip', '10.0.0.1')])
def test_postgresql_a_value_array_text_does_not_take_sends_the_rows_by_bulk_create(field: str, value: Any) -> None:
    ReplicaAllFields.objects.bulk_create(with_value(field, value))
    expected = stored('default')
    ReplicaAllFields.objects.all().delete()

    found, inserts = inserted_with(with_value(field, value))

    assert found == expected
    assert inserts and not any('::varchar[]' in sql for sql in inserts)  # (bulk_create casts keep the length)


def with_value(field: str, value: Any) -> list[ReplicaAllFields]:
    objs = unnest_rows()
    setattr(objs[2], field, value)
    return objs


@postgres_only
@pytest.mark.django_db
def test_postgresql_a_primary_key_already_there_raises_so_the_group_falls_back_to_one_row_at_a_time() -> None:
    bulk.insert_rows(ReplicaAllFields, unnest_rows()[:1], 'default')
    with pytest.raises(IntegrityError):
        bulk.insert_rows(ReplicaAllFields, unnest_rows()[:2], 'default')


@pytest.mark.parametrize(('field', 'plain'), [
    (models.CharField(max_length=5), True),
    (models.DecimalField(max_digits=5, decimal_places=2), True),
    (models.DateTimeField(), True),
    (models.DateField(), True),
    (models.DateTimeField(auto_now=True), False),
    (models.DateField(auto_now_add=True), False),
    (models.FileField(), False),
])
def test_a_new_rows_values_are_read_directly_only_where_pre_save_would_only_read_them(field: Any, plain: bool):
    # auto_now, auto_now_add and files keep their pre_save (it sets or saves the value)
    assert bulk._plain_pre_save(field) is plain


@pytest.mark.django_db
@pytest.mark.parametrize('index', range(len(rows())))
def test_a_single_new_row_goes_as_one_plain_insert_and_reads_back_as_bulk_create_writes_it(index: int) -> None:
    # every field type of ReplicaAllFields, floats, JSON, bytes and durations included (one row each time)
    ReplicaAllFields.objects.bulk_create([rows()[index]])
    expected = stored('default')
    ReplicaAllFields.objects.all().delete()

    obj = rows()[index]
    found, inserts = inserted_with([obj])

    assert found == expected
    assert len(inserts) == 1 and ' VALUES (' in inserts[0] and 'UNNEST' not in inserts[0]
    assert not obj._state.adding and obj._state.db == 'default'
