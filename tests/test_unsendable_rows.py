"""Rows that replica queues would refuse (a kombu type marker, nesting too deep) fail alone.

A replica's gate refuses a whole message holding such a value (``replica/guard.py``); sent in a
batch, one such row would have every row of the batch dead-lettered with it. A save refuses the
value with a clear error; a row changed without ``save()`` is held back in the outbox alone, with
the reason, while the rest of its drain is published.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from cqrs_celery import DataError, SignalType
from cqrs_celery.exceptions import MetaError, PublishError
from cqrs_celery.master.publish import build_envelope, refusal
from cqrs_celery.models import OutboxEvent
from cqrs_celery.producer import send_batch
from cqrs_celery.serialization import ENVELOPE_LEVELS, unsendable
from tests.master_app.models import AllFields, Author, Item
from tests.replica_app.models import ReplicaAllFields

#: What kombu's JSON decoder would turn into a datetime, and one it would fail on.
MARKER = {'__type__': 'datetime', '__value__': '2024-01-01T00:00:00'}
UNKNOWN_MARKER = {'__type__': 'nope', '__value__': 1}
DEEPEST = 100 - ENVELOPE_LEVELS  # max_nesting_depth by default

pytestmark = pytest.mark.django_db(transaction=True)


def nested(levels):
    value = {}
    for _ in range(levels - 1):
        value = {'a': value}
    return value


@pytest.mark.parametrize('value', [MARKER, UNKNOWN_MARKER, [1, MARKER], {'a': {'b': [UNKNOWN_MARKER]}}])
def test_a_json_value_holding_a_kombu_type_marker_is_refused_at_save(value, loopback):
    with pytest.raises(DataError, match=r'AllFields\.document: the value holds .*a kombu type marker'):
        AllFields.objects.create(document=value)

    assert not AllFields.objects.exists() and not OutboxEvent.objects.exists()


@pytest.mark.parametrize('value', [{'__type__': 'x'}, {'__value__': 1}, {'__type__': 'x', '__value__': 1, 'y': 2},
                                   '__type__', ['__type__', '__value__']])
def test_a_json_value_that_is_not_exactly_a_marker_replicates(value, loopback):
    row = AllFields.objects.create(document=value)

    assert ReplicaAllFields.objects.get(pk=row.pk).document == value


def test_metadata_holding_a_kombu_type_marker_fails_the_save(monkeypatch):
    monkeypatch.setattr(Author, 'get_cqrs_meta', lambda self, **kwargs: {'when': MARKER})

    with pytest.raises(MetaError, match='kombu type marker'):
        Author.objects.create(name='marked')
    assert not Author.objects.exists()


@pytest.mark.parametrize('bad_value, reason', [(MARKER, 'kombu type marker'),
                                               (nested(DEEPEST + 2), 'nests deeper than')])
def test_a_row_changed_without_save_that_replicas_would_refuse_is_held_back_alone(bad_value, reason, loopback):
    rows = [AllFields.objects.create(char=f'row {i}') for i in range(4)]
    bad = rows[2]
    loopback.clear()

    with transaction.atomic():  # one commit, so one drain: the four rows would go out as one batch
        AllFields.cqrs.bulk_update(AllFields.objects.exclude(pk=bad.pk), char='changed')
        AllFields.cqrs.bulk_update(AllFields.objects.filter(pk=bad.pk), document=bad_value)

    for row in rows:
        replica = ReplicaAllFields.objects.get(pk=row.pk)
        if row.pk == bad.pk:
            assert (replica.cqrs_revision, replica.document) == (0, None)
        else:
            assert (replica.cqrs_revision, replica.char) == (1, 'changed')
    [event] = OutboxEvent.objects.all()
    assert event.pk_value == f'"{bad.pk}"' and event.attempts == 1 and not event.set_aside
    assert reason in event.error and 'the row cannot be published until it changes' in event.error

    # Once the row holds something replicas take, its next change carries it.
    fixed = AllFields.objects.get(pk=bad.pk)
    fixed.document = {'fixed': True}
    fixed.save()
    assert ReplicaAllFields.objects.get(pk=bad.pk).document == {'fixed': True}


def test_a_batch_with_a_row_replicas_would_refuse_is_not_sent_at_all(cqrs_captured):
    good = build_envelope(AllFields(char='good'), SignalType.SYNC)
    bad = build_envelope(AllFields(char='bad', document=[UNKNOWN_MARKER]), SignalType.SYNC)

    with pytest.raises(PublishError, match='kombu type marker'):
        send_batch([good, bad])
    assert cqrs_captured == []

    send_batch([good])
    assert cqrs_captured == [good]


def test_rows_of_models_without_container_fields_are_not_walked():
    envelope = build_envelope(Item(sku='A', name='plain'), SignalType.SYNC)
    envelope.instance_data['name'] = MARKER  # cannot come from a scalar field: not looked for

    assert refusal(envelope) is None


@pytest.mark.parametrize('value, deepest, refused', [
    (1, 1, None), ([], 1, None), ([[]], 1, 'nests deeper'), (nested(3), 3, None), (nested(4), 3, 'nests deeper'),
    ({'a': (1, {MARKER['__type__']: 1})}, 5, None), ({'x': [MARKER]}, 5, 'kombu type marker'),
    (frozenset({1}), 1, None),
])
def test_unsendable_names_what_replica_queues_refuse(value, deepest, refused):
    reason = unsendable(value, deepest)

    assert (reason is None) if refused is None else (refused in reason)
