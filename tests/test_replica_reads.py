"""The replica's reads before a group applies (replica/reads.py): stored rows and tombstones by key,
with each SELECT compiled once per model, read back value for value as the ORM reads them; and a
single-row message applied with no more statements than its change needs.

Tier i: in this process, on the suite's database (SQLite, or PostgreSQL in CI).
"""

import pytest
from django.db import connection, models, transaction
from django.test.utils import CaptureQueriesContext

from cqrs_celery import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.replica import reads
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import ReplicaAllFields, ReplicaItem
from tests.test_bulk_insert import rows

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = [field.attname for field in ReplicaAllFields._meta.concrete_fields]


def values(obj):
    return [getattr(obj, name) for name in FIELDS]


def test_stored_rows_read_every_field_back_as_the_orm_reads_it():
    ReplicaAllFields.objects.bulk_create(rows())
    pks = [obj.pk for obj in rows()]

    with transaction.atomic():  # (the rows are locked where the database can)
        found = reads.stored_rows(ReplicaAllFields, 'default', pks + ['00000000-0000-0000-0000-00000000dead'])

    expected = {obj.pk: values(obj) for obj in ReplicaAllFields.objects.all()}
    assert {pk: values(obj) for pk, obj in found.items()} == expected
    assert all(not obj._state.adding and obj._state.db == 'default' for obj in found.values())


def test_the_select_is_compiled_once_per_model(monkeypatch):
    ReplicaItem.objects.create(sku='A', name='a', quantity=1, cqrs_revision=0, cqrs_updated='2024-01-01T00:00Z')
    reads._selects.clear()
    compiled = []
    compile_select = reads._compile
    monkeypatch.setattr(reads, '_compile', lambda *args: compiled.append(args) or compile_select(*args))

    with transaction.atomic():
        first = reads.stored_rows(ReplicaItem, 'default', ['A'])
        again = reads.stored_rows(ReplicaItem, 'default', ['A', 'B'])

    assert len(compiled) == 1
    assert list(first) == list(again) == ['A']


class _OnlyInStock(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(quantity__gt=0)


class ItemsInStock(ReplicaItem):
    """A default manager whose queryset takes a parameter: its rows are read through the ORM each time."""

    in_stock = _OnlyInStock()

    class Meta:
        proxy = True
        app_label = 'replica_app'
        default_manager_name = 'in_stock'


def test_a_default_manager_that_filters_with_parameters_is_read_through_the_orm():
    for sku, quantity in (('A', 1), ('B', 0)):
        ReplicaItem.objects.create(sku=sku, name=sku, quantity=quantity, cqrs_revision=0,
                                   cqrs_updated='2024-01-01T00:00Z')

    with transaction.atomic():
        assert list(reads.stored_rows(ItemsInStock, 'default', ['A', 'B'])) == ['A']
    assert [select for key, select in reads._selects.items() if key[0] is ItemsInStock] == [None]


def test_tombstones_are_read_by_key():
    ReplicaTombstone.objects.create(cqrs_id='item', pk_value='A', revision=4)
    ReplicaTombstone.objects.create(cqrs_id='other', pk_value='B', revision=5)

    assert reads.tombstones('default', 'item', ['A', 'B', 'C']) == {'A': 4}
    assert reads.tombstones('default', 'item', []) == {}


def item(revision, name='apple'):
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk='A',
                    instance_data={'sku': 'A', 'name': name, 'quantity': 1, 'cqrs_revision': revision,
                                   'cqrs_updated': '2024-05-06T07:08:09+00:00'}).to_wire()


def statements(wire):
    """The statements applying ``wire`` sent (not BEGIN/COMMIT, not the test project's own log of outcomes)."""
    with CaptureQueriesContext(connection) as queries:
        assert apply_envelope.run(wire) in ('created', 'updated')
    return [query['sql'] for query in queries.captured_queries
            if query['sql'] not in ('BEGIN', 'COMMIT') and 'appliedlog' not in query['sql']]


def test_a_single_row_message_costs_one_statement_per_read_and_write_it_needs():
    lock = 1 if connection.vendor == 'postgresql' else 0  # PostgreSQL's advisory lock per key

    create = statements(item(0))
    update = statements(item(1, name='pear'))

    assert len(create) == lock + 3, create  # the row, its tombstone, the INSERT
    assert create[-1].startswith('INSERT INTO "replica_app_replicaitem"')
    assert len(update) == lock + 2, update  # the row (no tombstone: it is there), the UPDATE
    assert not any('SAVEPOINT' in sql for sql in create + update)
    assert ReplicaItem.objects.values_list('name', 'cqrs_revision').get() == ('pear', 1)
