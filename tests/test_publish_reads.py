"""The publisher reads a default-serialized model's rows as value tuples: the envelopes stay those of the instances.

``publish.envelopes_for`` (what every drain of the outbox calls) reads the rows of a model that
leaves serialization to cqrs_celery with ``values_list`` and builds each dict without an instance
(``serialization.row_plan`` / ``row_to_dict``). Whatever path a model takes, each envelope must be
exactly the one ``build_envelope`` makes from the row loaded as an instance.
"""

import datetime
import decimal
import uuid

import pytest

from cqrs_celery.constants import SignalType
from cqrs_celery.master import publish
from cqrs_celery.master.publish import Change, build_envelope, envelopes_for
from cqrs_celery.serialization import row_plan, to_json
from tests.master_app.fields import Blob
from tests.master_app.models import AllFields, Author, Book, Gadget, Item, Renamed, SerializedBook
from tests.test_field_types import VALUES, full_row_values, skip_unless_database_can_hold

pytestmark = pytest.mark.django_db(transaction=True)


def expected_envelope(model, pk):
    """The envelope of the row as an instance read from the database would give it."""
    return build_envelope(model._base_manager.get(pk=pk), SignalType.SAVE, 'default', meta=None, correlation=None)


def read(model, *pks):
    return envelopes_for('default', [Change(cqrs_id=model.CQRS_ID, pk=to_json(pk)) for pk in pks])


def assert_same(found, expected):
    assert found.to_wire() == expected.to_wire()
    assert type(found.instance_pk) is type(expected.instance_pk)


@pytest.mark.parametrize(('field', 'value'), VALUES, ids=[f'{f}-{i}' for i, (f, _) in enumerate(VALUES)])
def test_every_field_type_reads_as_the_instance_gives_it(cqrs_captured, field, value):
    skip_unless_database_can_hold(field, value)
    row = AllFields.objects.create(**{field: value})

    [found] = read(AllFields, row.pk)

    assert_same(found, expected_envelope(AllFields, row.pk))


def test_rows_with_every_field_set_and_every_field_none_read_as_their_instances(cqrs_captured):
    full = AllFields.objects.create(**full_row_values(Author.objects.create(name='a')))
    empty = AllFields.objects.create()

    found = read(AllFields, full.pk, empty.pk)

    for envelope, pk in zip(found, (full.pk, empty.pk), strict=True):
        assert_same(envelope, expected_envelope(AllFields, pk))


def test_the_default_model_is_read_as_tuples_and_others_as_instances(cqrs_captured, monkeypatch):
    author = Author.objects.create(name='a')
    book = SerializedBook.objects.create(title='t', price=decimal.Decimal('1.50'))
    reads = []
    original = publish._read_rows
    monkeypatch.setattr(publish, '_read_rows', lambda model, using, pks: reads.append(
        (model, original(model, using, pks))) or reads[-1][1])

    read(Author, author.pk)
    read(SerializedBook, book.pk)

    assert [type(row) for row in reads[0][1].values()] == [tuple]  # no instance built
    assert [type(row) for row in reads[1][1].values()] == [SerializedBook]  # CQRS_SERIALIZER: an instance


def test_a_value_only_its_field_can_convert_rereads_that_row_as_an_instance(cqrs_captured):
    gadget = Gadget.objects.create(blob=Blob('abc'))
    plain = Gadget.objects.create(blob=None)

    found = read(Gadget, gadget.pk, plain.pk)

    assert found[0].instance_data['blob'] == 'blob:abc'  # the field's value_to_string
    for envelope, pk in zip(found, (gadget.pk, plain.pk), strict=True):
        assert_same(envelope, expected_envelope(Gadget, pk))


def test_tracked_and_limited_fields_and_other_primary_keys_read_as_their_instances(cqrs_captured):
    author = Author.objects.create(name='a', email='a@example.com')  # CQRS_TRACKED_FIELDS: a field tracker
    book = Book.objects.create(title='t', price=decimal.Decimal('9.9900'), author=author)
    renamed = Renamed.objects.create(number=5, name='n')
    item = Item.objects.create(sku='sku-1', name='n', quantity=3)

    for model, pk in ((Author, author.pk), (Book, book.pk), (Renamed, renamed.pk), (Item, item.pk)):
        [found] = read(model, pk)
        assert_same(found, expected_envelope(model, pk))


def test_a_row_gone_before_it_is_read_gives_none(cqrs_captured):
    author = Author.objects.create(name='a')
    pk = author.pk
    Author.objects.filter(pk=pk).delete()

    assert read(Author, pk) == [None]


@pytest.mark.parametrize('override', ['__init__', 'from_db'])
def test_a_model_that_loads_its_rows_its_own_way_is_read_as_instances(monkeypatch, override):
    from django.db import models

    from cqrs_celery import serialization

    monkeypatch.setattr(serialization, '_row_plans', {})
    assert row_plan(Author) is not None
    if override == '__init__':
        monkeypatch.setattr(Author, '__init__', lambda self, *args, **kwargs: models.Model.__init__(
            self, *args, **kwargs), raising=False)
    else:
        monkeypatch.setattr(Author, 'from_db', classmethod(lambda cls, db, names, values: models.Model.from_db.__func__(
            cls, db, names, values)), raising=False)
    monkeypatch.setattr(serialization, '_row_plans', {})

    assert row_plan(Author) is None


def test_the_values_of_every_type_convert_as_to_json_does():
    moment = datetime.datetime(2021, 3, 4, 5, 6, 7, 891011, tzinfo=datetime.timezone.utc)
    values = {'char': 'x', 'big': 7, 'flag': False, 'decimal': decimal.Decimal('1.50'), 'moment': moment,
              'token': uuid.UUID(int=5), 'duration': datetime.timedelta(seconds=1), 'blob': b'\x01'}
    plan = [row for row in row_plan(AllFields) if row[0] in values]

    data = publish.row_to_dict(plan, [values[row[0]] for row in plan])

    assert data == {name: to_json(value) for name, value in values.items()}


# What a SQLite datetime column may hold: the forms Django writes, and others SQL or another program may.
STORED_MOMENTS = [
    '2024-02-29 23:59:58.123456', '2024-02-29 23:59:58', '0999-01-02 03:04:05.000001', '2024-02-29 23:59:58.000000',
    '2024-02-29 23:59:58.5', '2024-02-29T23:59:58.123456', '2024-02-29 23:59:58.123456+05:30', '2024-02-29 23:59',
    '2024-02-29', '2024-02-29 23:59:58Z', 'not a date', '17',
]


@pytest.mark.parametrize('stored', STORED_MOMENTS)
def test_a_sqlite_datetime_column_reads_as_the_instance_gives_it_whatever_text_it_holds(cqrs_captured, stored):
    from django.db import connection

    if connection.vendor != 'sqlite':
        pytest.skip('SQLite keeps datetimes as text')
    row = AllFields.objects.create(moment=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    with connection.cursor() as cursor:
        pk = AllFields._meta.pk
        cursor.execute(f'UPDATE {AllFields._meta.db_table} SET moment = %s, cqrs_updated = %s WHERE {pk.column} = %s',
                       [stored, stored, pk.get_db_prep_value(row.pk, connection)])

    [found] = read(AllFields, row.pk)

    assert_same(found, expected_envelope(AllFields, row.pk))


@pytest.mark.parametrize('zone', ['UTC', 'Asia/Kolkata'])
def test_a_sqlite_datetime_column_follows_the_connection_time_zone(cqrs_captured, zone):
    from django.db import connections

    connection = connections['default']
    if connection.vendor != 'sqlite':
        pytest.skip('SQLite keeps datetimes as text')
    row = AllFields.objects.create(moment=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    before = connection.settings_dict.get('TIME_ZONE')
    connection.settings_dict['TIME_ZONE'] = zone
    connection.__dict__.pop('timezone', None)
    try:
        [found] = read(AllFields, row.pk)
        expected = expected_envelope(AllFields, row.pk)
    finally:
        connection.settings_dict['TIME_ZONE'] = before
        connection.__dict__.pop('timezone', None)

    assert_same(found, expected)
    assert found.instance_data['moment'].endswith('+00:00' if zone == 'UTC' else '+05:30')
