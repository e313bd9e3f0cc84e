"""Group apply (replica/group.py): a v2 batch applies in one transaction with the same revision and
tombstone rules per row as one envelope at a time, and a failing row fails alone.

Tier i: the task function runs in this process; retries and dead letters are captured.
"""

import dataclasses
import datetime
import decimal
import random
import uuid

import pytest
import ujson
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cqrs_celery import SignalType
from cqrs_celery.envelope import Envelope, encode_batch
from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.replica.apply import Outcome, apply
from cqrs_celery.replica.group import apply_many, uses_bulk_path
from cqrs_celery.replica.tasks import apply_envelope
from cqrs_celery.signals import envelope_handled
from tests.replica_app.models import ReplicaAuthor, ReplicaItem

pytestmark = pytest.mark.django_db(transaction=True)

UPDATED_AT = '2024-05-06T07:08:09.123456+00:00'


def item(sku, revision, signal=SignalType.SAVE, name=None, quantity=1, **changes):
    data = {'sku': sku, 'name': name or f'{sku}@{revision}', 'quantity': quantity, 'cqrs_revision': revision,
            'cqrs_updated': UPDATED_AT}
    return Envelope(signal_type=signal, cqrs_id='item', instance_pk=sku, instance_data=data, **changes)


def author(pk, revision, name='ann'):
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='author', instance_pk=pk,
                    instance_data={'id': pk, 'name': name, 'email': '', 'cqrs_revision': revision,
                                   'cqrs_updated': UPDATED_AT}, meta={'tenant': 't'})


def stored():
    return {sku: (name, revision) for sku, name, revision in
            ReplicaItem.objects.values_list('sku', 'name', 'cqrs_revision')}


def test_plain_replicas_take_the_bulk_path_and_models_with_their_own_methods_do_not():
    assert uses_bulk_path(ReplicaItem)
    assert not uses_bulk_path(ReplicaAuthor)  # overrides cqrs_create / cqrs_update


def test_a_batch_creates_updates_and_deletes_with_one_query_per_kind_of_write():
    for sku in ('A', 'B'):
        apply(item(sku, 0))
    batch = [item('C', 0), item('D', 0), item('A', 1), item('B', 1, SignalType.DELETE), item('E', 3)]

    with CaptureQueriesContext(connection) as queries:
        results = apply_many(batch, settings.CQRS['queue'])

    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED,
                                            Outcome.CREATED]
    assert stored() == {'A': ('A@1', 1), 'C': ('C@0', 0), 'D': ('D@0', 0), 'E': ('E@3', 3)}
    inserts = [q for q in queries.captured_queries if q['sql'].startswith('INSERT INTO "replica_app_replicaitem"')]
    assert len(inserts) == 1, 'new rows are written with one bulk insert'
    assert len(queries.captured_queries) < 15


def test_the_same_row_several_times_in_one_batch_follows_the_revision_rules_in_order():
    batch = [item('A', 0), item('A', 2), item('A', 1), item('A', 2), item('A', 3, SignalType.DELETE),
             item('A', 2), item('B', 5, SignalType.DELETE), item('B', 4)]

    outcomes = [r.outcome for r in apply_many(batch, settings.CQRS['queue'])]

    assert outcomes == [Outcome.CREATED, Outcome.UPDATED, Outcome.STALE, Outcome.DUPLICATE, Outcome.DELETED,
                        Outcome.STALE, Outcome.TOMBSTONED, Outcome.STALE]
    assert stored() == {}
    assert dict(ReplicaTombstone.objects.values_list('pk_value', 'revision')) == {'A': 3, 'B': 5}


def test_a_row_re_created_after_its_delete_forgets_the_tombstone():
    apply_many([item('A', 0), item('A', 1, SignalType.DELETE), item('A', 2)], settings.CQRS['queue'])

    assert stored() == {'A': ('A@2', 2)}
    assert not ReplicaTombstone.objects.filter(pk_value='A').exists()


@pytest.mark.parametrize('seed', range(8))
def test_a_batch_ends_where_applying_its_rows_one_by_one_ends(seed):
    rng = random.Random(seed)
    skus = ['A', 'B', 'C']
    batch = []
    for revision in range(12):
        sku = rng.choice(skus)
        signal = rng.choice([SignalType.SAVE, SignalType.SAVE, SignalType.DELETE, SignalType.SYNC])
        batch.append(item(sku, rng.randrange(0, 8), signal, quantity=revision))
    for envelope in batch:
        apply(envelope)
    one_by_one = (stored(), dict(ReplicaTombstone.objects.values_list('pk_value', 'revision')))
    ReplicaItem.objects.all().delete()
    ReplicaTombstone.objects.all().delete()

    apply_many(batch, settings.CQRS['queue'])

    assert (stored(), dict(ReplicaTombstone.objects.values_list('pk_value', 'revision'))) == one_by_one


def test_models_with_their_own_methods_get_them_called_per_row_inside_the_group():
    results = apply_many([author(1, 0), author(2, 0), author(1, 1, name='ann 2')], settings.CQRS['queue'])

    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.CREATED, Outcome.UPDATED]
    assert ReplicaAuthor.objects.get(pk=1).last_meta == {'tenant': 't'}
    assert ReplicaAuthor.objects.get(pk=1).name == 'ann 2'


def test_a_row_that_does_not_fit_fails_alone_and_the_rest_of_the_batch_applies(letters, retries):
    bad = item('X', 0, quantity='many')
    body = ujson.loads(ujson.dumps(encode_batch([item('A', 0), bad, item('B', 0)])))

    outcome = apply_envelope.run(body)

    assert outcome == 'created=2 dead_lettered=1'
    assert set(stored()) == {'A', 'B'}
    assert [letter['envelope']['instance_pk'] for letter in letters] == ['X']
    assert retries == []


def test_a_value_the_database_refuses_falls_back_to_one_transaction_per_row(letters, retries):
    too_long = item('Y', 0, name='n' * 500)  # ReplicaItem.name is max_length=100
    body = encode_batch([item('A', 0), too_long, item('B', 0)])

    outcome = apply_envelope.run(ujson.loads(ujson.dumps(body)))

    assert outcome == 'created=2 dead_lettered=1'
    assert set(stored()) == {'A', 'B'}
    assert [letter['envelope']['instance_pk'] for letter in letters] == ['Y']


def test_an_update_too_long_for_its_column_is_refused_not_cut_short(letters, retries):
    # The bulk UPDATE casts values without their length (replica/bulk.py): the column still refuses.
    apply_envelope.run(ujson.loads(ujson.dumps(encode_batch([item('A', 0), item('Y', 0), item('B', 0)]))))
    body = encode_batch([item('A', 1), item('Y', 1, name='n' * 500), item('B', 1)])

    outcome = apply_envelope.run(ujson.loads(ujson.dumps(body)))

    assert outcome == 'dead_lettered=1 updated=2'
    assert stored() == {'A': ('A@1', 1), 'Y': ('Y@0', 0), 'B': ('B@1', 1)}
    assert [letter['envelope']['instance_pk'] for letter in letters] == ['Y']


def test_a_failing_row_of_a_batch_is_retried_alone(letters, retries, monkeypatch):
    original = ReplicaAuthor.cqrs_create.__func__

    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        if mapped_data['id'] == 2:
            raise RuntimeError('replica bug')
        return original(cls, sync, mapped_data, previous_data, meta)

    monkeypatch.setattr(ReplicaAuthor, 'cqrs_create', classmethod(cqrs_create))
    body = ujson.loads(ujson.dumps(encode_batch([author(1, 0), author(2, 0), author(3, 0)])))

    assert apply_envelope.run(body) == 'created=2 retrying=1'
    assert set(ReplicaAuthor.objects.values_list('pk', flat=True)) == {1, 3}
    assert [(e.instance_pk, e.retries) for e, _, _ in retries] == [(2, 1)]


def test_bad_rows_of_a_batch_are_dead_lettered_and_every_row_is_reported(letters, retries):
    seen = []

    def receiver(sender, envelope, outcome, queue, raw, **kwargs):
        seen.append((envelope.instance_pk if envelope else raw, outcome))

    body = ujson.loads(ujson.dumps(encode_batch([item('A', 0), item('B', 0)])))
    body['rows'].insert(1, {'signal_type': 'SAVE', 'instance_pk': 'Z'})
    envelope_handled.connect(receiver)
    try:
        assert apply_envelope.run(body) == 'created=2 dead_lettered=1'
    finally:
        envelope_handled.disconnect(receiver)

    assert sorted(seen, key=str) == sorted([('A', 'created'), ('B', 'created'),
                                            ({'signal_type': 'SAVE', 'instance_pk': 'Z', 'v': 1, 'cqrs_id': 'item',
                                              'queue': None, 'expires': None, 'retries': 0}, 'dead_lettered')],
                                           key=str)
    assert len(letters) == 1


def test_a_forced_directed_sync_repairs_a_replica_that_is_ahead():
    queue = settings.CQRS['queue']
    apply(item('A', 1000))
    sync = item('A', 7, SignalType.SYNC, name='restored', queue=queue)

    assert apply(sync).outcome == Outcome.STALE
    assert apply(dataclasses.replace(sync, forced=True)).outcome == Outcome.UPDATED
    assert apply_many([dataclasses.replace(sync, forced=True, instance_data={**sync.instance_data, 'name': 'again'})],
                      queue)[0].outcome == Outcome.UPDATED
    assert stored() == {'A': ('again', 7)}


TRICKY_SKUS = ['q"uote', 'back\\slash', 'com,ma', '{brace}', ' spaced ', 'NULL', '', 'é✓', 'a\\"b']


def test_rows_whose_keys_hold_array_punctuation_are_found_locked_and_tombstoned():
    apply_many([item(sku, 0) for sku in TRICKY_SKUS], settings.CQRS['queue'])
    results = apply_many([item(sku, 1) for sku in TRICKY_SKUS[:5]]
                         + [item(sku, 1, SignalType.DELETE) for sku in TRICKY_SKUS[5:]], settings.CQRS['queue'])

    assert [r.outcome for r in results] == [Outcome.UPDATED] * 5 + [Outcome.DELETED] * 4
    assert stored() == {sku: (f'{sku}@1', 1) for sku in TRICKY_SKUS[:5]}
    assert dict(ReplicaTombstone.objects.values_list('pk_value', 'revision')) == {sku: 1 for sku in TRICKY_SKUS[5:]}
    late = apply_many([item(sku, 0) for sku in TRICKY_SKUS], settings.CQRS['queue'])
    assert {r.outcome for r in late} == {Outcome.STALE}


@pytest.mark.skipif(connection.vendor != 'postgresql', reason='array parameters are PostgreSQL only')
@pytest.mark.parametrize(('values', 'cast'), [
    ([1, -2, 2 ** 63 - 1, -(2 ** 63)], 'bigint'),
    (TRICKY_SKUS, 'text'),
    ([], 'text'),
    ([True, None, False], 'boolean'),
    ([decimal.Decimal('-1.50'), decimal.Decimal('1E+3'), None, decimal.Decimal('0.000000001')], 'numeric'),
    ([datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=5.5))),
      datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc), None], 'timestamp with time zone'),
    ([datetime.date(1, 1, 1), datetime.date(9999, 12, 31)], 'date'),
    ([datetime.time(0, 0), datetime.time(23, 59, 59, 1)], 'time'),
    ([uuid.UUID(int=0), uuid.UUID(int=2 ** 128 - 1)], 'uuid'),
    ([None, None], 'integer'),
], ids=['ints', 'strings', 'empty', 'booleans', 'decimals', 'datetimes', 'dates', 'times', 'uuids', 'nulls'])
def test_an_array_parameter_reaches_postgresql_value_for_value(values, cast):
    from cqrs_celery.models import array_param

    with connection.cursor() as cursor:
        cursor.execute(f'SELECT %s::{cast}[]', [array_param(values)])
        assert cursor.fetchone()[0] == values
    assert array_param([1.5, 'a']) == [1.5, 'a']  # anything else is left to psycopg


def test_a_list_of_integer_pks_goes_to_the_database_as_the_field_would_prepare_it():
    from django.db import models

    from cqrs_celery.models import _prepared

    class Doubled(models.IntegerField):  # a subclass may prepare its values otherwise: it is asked
        def get_db_prep_value(self, value, connection, prepared=False):
            return value * 2

    ints = [1, -5, 2 ** 63 - 1]
    for field in (models.BigAutoField(primary_key=True), models.IntegerField(), models.PositiveSmallIntegerField()):
        assert _prepared(connection, field, ints) == [field.get_db_prep_value(v, connection) for v in ints] == ints
    assert _prepared(connection, Doubled(), ints) == [2, -10, 2 ** 64 - 2]
    # anything but plain ints takes the field's own preparation (a bool, a string from JSON)
    assert _prepared(connection, models.IntegerField(), [True, '7']) == [1, 7]


def test_data_keys_that_name_no_field_are_not_remembered():
    from cqrs_celery import serialization

    data = {'sku': 'A', 'name': 'n', 'quantity': 1, 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT}
    serialization.from_json(ReplicaItem, data)
    known = dict(serialization._keys[ReplicaItem])
    for i in range(50):
        serialization.from_json(ReplicaItem, {**data, f'unknown_{i}': i})
    assert serialization._keys[ReplicaItem] == known
