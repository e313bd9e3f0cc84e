"""Generated hostile envelopes through the replica task (issue 8, DESIGN §8): whatever the values and
the shape, the task returns an outcome (nothing escapes it), bad input is a dead letter with its
reason and never a retry, every row it writes reads back, and the pk still takes a good change.

Tier i: the replica task runs in this process; dead letters and retries are captured. The cases are
drawn from a fixed seed, so a failure names a case that reproduces.
"""

import json
import os
import random
import uuid

import pytest
from django.db import connection
from django.test import override_settings

from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import (
    ReplicaAllFields,
    ReplicaAuthor,
    ReplicaBook,
    ReplicaItem,
    ReplicaLongKey,
    ReplicaRenamed,
)

pytestmark = pytest.mark.django_db(transaction=True)

GOOD_UPDATED = '2024-05-06T07:08:09.123456+00:00'

#: Values a sender could put anywhere in a JSON body.
HOSTILE = [
    None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30, -(10 ** 40), 1.5, -0.0,
    1e308, -1e-308, '', ' ', 'x', 'x' * 300, 'lone \ud800', 'nul \x00 inside', 'tab\tnew\nline', '✓ ünï', '1e30',
    'NaN', 'Infinity', '-inf', '0x10', '1_000', ' 7 ', '١٢٣', '12345678901234567890.1234567890',
    '-0.000000000000000000001', '2024-13-01', '2024-02-30', '9999-12-31', '0001-01-01', '0000-01-01',
    '9999-12-31T23:59:59.999999+00:00', '9999-12-31T23:00:00-05:00', '0001-01-01T00:30:00+01:00',
    '9999-12-31T23:59:59', '0001-01-01T00:00:00', '0001-01-01 00:30',
    '2024-05-06T07:08:09', '2024-05-06 07:08:09+14:00', '24:00', '23:59:60', '12:00:00.1234567',
    'P1D', 'P9999999999D', '-P999999999DT23H', 'PT-1S', '99999999:00:00', '1 day', str(uuid.uuid4()),
    '00000000-0000-0000-0000-000000000000', 'not-a-uuid', 'AAAA', 'AAA', '!!!', '////', '::1', '256.1.1.1',
    'a@b', 'http://', 'ftp://x', [], {}, [1, 2], {'a': 1}, [[[[[]]]]], {'__type__': 'x', '__value__': 1},
]

#: Values each field of ReplicaAllFields can hold (so a case mixes good and bad values).
GOOD = {
    'big': [0, 2 ** 63 - 1, -(2 ** 63)], 'small': [0, -32768, 32767], 'positive': [0, 2 ** 31 - 1],
    'flag': [True, False], 'char': ['', 'x' * 50], 'text': ['', 'long ' * 100], 'slug': ['a-b'],
    'email': ['a@b.c'], 'url': ['http://x.y/'], 'ip': ['10.0.0.1', '::1'],
    'decimal': ['123456789012345.123456789012345', '-0.000000000000001', '0'], 'floating': [1.5, -1e300, 0],
    'day': ['2024-02-29', '0001-01-01', '9999-12-31'], 'moment': ['2024-05-06T07:08:09.123456+00:00'],
    'clock': ['23:59:59.999999', '00:00'], 'duration': ['P1DT02H03M04.000005S', '-PT1S'],
    'token': [str(uuid.uuid4())], 'blob': ['AAEC', ''], 'document': [{'a': [1, None, 'x']}, [], 'text', 1],
    'author_id': [1, None], 'cqrs_updated': [GOOD_UPDATED],
}
FIELDS = [*GOOD, 'id', 'cqrs_revision', 'unknown_field']
SIGNALS = ['SAVE', 'SYNC', 'DELETE']
OUTCOMES = {'created', 'updated', 'deleted', 'tombstoned', 'stale', 'duplicate', 'not_for_me', 'dead_lettered',
            'waiting'}


def generated_case(rng):
    """One envelope (v1 or a v2 batch) with hostile values in some fields and keys."""
    pk = str(uuid.uuid4())
    rows = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = {'id': pk, 'cqrs_revision': rng.choice([0, 1, 2, 5]), 'cqrs_updated': GOOD_UPDATED}
        for name in rng.sample(FIELDS, rng.randint(1, 6)):
            good = GOOD.get(name)
            data[name] = rng.choice(good) if good and rng.random() < 0.4 else rng.choice(HOSTILE)
        row = {'signal_type': rng.choice(SIGNALS), 'instance_pk': pk, 'instance_data': data,
               'previous_data': None, 'meta': None, 'correlation_id': None}
        for key in rng.sample(['signal_type', 'instance_pk', 'previous_data', 'meta', 'correlation_id',
                               'instance_data', 'forced'], rng.choice([0, 0, 0, 1])):
            row[key] = rng.choice(HOSTILE)
        rows.append(row)
    shared = {'cqrs_id': 'all_fields', 'queue': None, 'expires': None, 'retries': 0}
    for key in rng.sample([*shared, 'v', 'not_before'], rng.choice([0, 0, 0, 1])):
        shared[key] = rng.choice(HOSTILE)
    one_row = len(rows) == 1 and rng.random() < 0.7
    body = {'v': 1, **rows[0], **shared} if one_row else {'v': 2, **shared, 'rows': rows}
    if rng.random() < 0.05:
        body.pop(rng.choice(sorted(body)))
    # what arrives is what JSON carries (a lone surrogate included, as json.loads gives it)
    return pk, json.loads(json.dumps(body))


def every_row_reads_back():
    for row in ReplicaAllFields.objects.all():
        [getattr(row, field.attname) for field in ReplicaAllFields._meta.concrete_fields]
    list(ReplicaTombstone.objects.values_list('cqrs_id', 'pk_value', 'revision'))


def good_change(pk):
    data = {'id': pk, 'cqrs_revision': 2_000_000_000, 'cqrs_updated': GOOD_UPDATED, 'char': 'repaired'}
    return {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'all_fields', 'instance_pk': pk, 'instance_data': data,
            'previous_data': None, 'meta': None, 'correlation_id': None, 'queue': None, 'expires': None,
            'retries': 0}


#: The replica's TIME_ZONE decides what a naive datetime means (west and east of UTC reach other years).
TIME_ZONES = ['UTC', 'Etc/GMT+10', 'Etc/GMT-14']


@pytest.mark.parametrize('seed', range(6))
def test_generated_hostile_envelopes_end_applied_or_dead_lettered_and_never_leave_an_unreadable_row(
        letters, retries, seed):
    rng = random.Random(f'issue-8-{seed}-{connection.vendor}{os.environ.get("FUZZ_SALT", "")}')
    with override_settings(TIME_ZONE=TIME_ZONES[seed % len(TIME_ZONES)]):
        apply_generated_cases(rng, seed, letters, retries)


def apply_generated_cases(rng, seed, letters, retries):
    for case in range(int(os.environ.get("FUZZ_N", 50))):
        pk, body = generated_case(rng)
        shown = f'case {seed}/{case}: {json.dumps(body)[:1500]}'
        before = len(letters)

        outcome = apply_envelope.run(body)

        named = {part.split('=')[0] for part in outcome.split()}
        assert named <= OUTCOMES, shown
        assert 'retrying' not in named, f'bad input was retried instead of dead-lettered: {shown}'
        assert all(0 <= countdown <= 900 for _, _, countdown in retries), f'a hop too long: {retries} {shown}'
        retries.clear()
        for letter in letters[before:]:
            assert letter['error']['reason'] and letter['error']['message'], shown
        every_row_reads_back()

        assert apply_envelope.run(good_change(pk)) in {'created', 'updated'}, shown
        assert ReplicaAllFields.objects.get(pk=pk).char == 'repaired', shown


#: Replica models of other shapes (own cqrs_create/update, mapped and text primary keys, NOT NULL
#: columns, metadata kept in a JSONField): CQRS_ID -> (model, pk maker, good data for a pk).
SHAPES = {
    'author': (ReplicaAuthor, lambda rng: rng.getrandbits(62),
               lambda pk: {'id': pk, 'name': 'repaired', 'email': 'a@b.c'}),
    'book': (ReplicaBook, lambda rng: rng.getrandbits(62),
             lambda pk: {'id': pk, 'title': 'repaired', 'price': '1.5', 'author': 1, 'published': '2024-01-01'}),
    'item': (ReplicaItem, lambda rng: f'sku-{rng.getrandbits(40):x}',
             lambda pk: {'sku': pk, 'name': 'repaired', 'quantity': 1}),
    'renamed': (ReplicaRenamed, lambda rng: rng.getrandbits(62), lambda pk: {'number': pk, 'name': 'repaired'}),
    'long_key': (ReplicaLongKey, lambda rng: f'{rng.getrandbits(40):x}' * rng.randint(1, 40),
                 lambda pk: {'key': pk, 'value': 1}),
}


def shaped_case(rng):
    cqrs_id = rng.choice(sorted(SHAPES))
    _, make_pk, good = SHAPES[cqrs_id]
    pk = make_pk(rng)
    data = {**good(pk), 'cqrs_revision': rng.choice([0, 1, 3]), 'cqrs_updated': GOOD_UPDATED}
    for name in rng.sample(sorted(data), rng.randint(1, 3)):
        if rng.random() < 0.3:
            data.pop(name)
        else:
            data[name] = rng.choice(HOSTILE)
    body = {'v': 1, 'signal_type': rng.choice(SIGNALS), 'cqrs_id': cqrs_id, 'instance_pk': pk, 'instance_data': data,
            'previous_data': rng.choice([None, {'name': rng.choice(HOSTILE)}]),
            'meta': rng.choice([None, {'who': rng.choice(HOSTILE)}, {'nested': [rng.choice(HOSTILE)]}]),
            'correlation_id': rng.choice([None, rng.choice(HOSTILE)]), 'queue': None, 'expires': None, 'retries': 0}
    return cqrs_id, pk, json.loads(json.dumps(body))


@pytest.mark.parametrize('seed', range(3))
def test_generated_hostile_envelopes_for_models_of_every_shape_never_retry_nor_leave_an_unreadable_row(
        letters, retries, seed):
    rng = random.Random(f'issue-8-shapes-{seed}-{connection.vendor}{os.environ.get("FUZZ_SALT", "")}')
    for case in range(int(os.environ.get('FUZZ_N', 50))):
        cqrs_id, pk, body = shaped_case(rng)
        shown = f'case {seed}/{case}: {json.dumps(body)[:1500]}'

        outcome = apply_envelope.run(body)

        assert outcome in OUTCOMES - {'waiting'}, shown
        assert outcome != 'retrying' and retries == [], shown
        for model, _, _ in SHAPES.values():
            for row in model.objects.all():
                [getattr(row, field.attname) for field in model._meta.concrete_fields]
        model, _, good = SHAPES[cqrs_id]
        repair = {**good(pk), 'cqrs_revision': 2_000_000_000, 'cqrs_updated': GOOD_UPDATED}
        body = {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': cqrs_id, 'instance_pk': pk, 'instance_data': repair}
        assert apply_envelope.run(body) in {'created', 'updated'}, shown
        assert model.objects.filter(pk=pk).exists(), shown
