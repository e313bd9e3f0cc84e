"""Values no replica column can hold are dead-lettered at once with the reason, never retried and never
written half-way (a row that could not be read back would block every later envelope of its pk).

Tier i: the replica task runs in this process; dead letters and retries are captured.
"""

import uuid

import pytest
import ujson
from django.db import connection
from django.test import override_settings

from cqrs_celery import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import ReplicaAllFields

pytestmark = pytest.mark.django_db(transaction=True)

UPDATED_AT = '2024-05-06T07:08:09.123456+00:00'


def envelope(**fields):
    pk = str(uuid.uuid4())
    data = {'id': pk, 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT, **fields}
    return ujson.loads(ujson.dumps(Envelope(signal_type=SignalType.SAVE, cqrs_id='all_fields', instance_pk=pk,
                                            instance_data=data).to_wire()))


@pytest.mark.parametrize(('field', 'value', 'reason'), [
    ('big', 2 ** 64, 'less than or equal'),
    ('big', -(2 ** 63) - 1, 'greater than or equal'),
    ('small', 40000, 'less than or equal'),
    ('positive', -1, 'greater than or equal'),
    ('char', 'x' * 51, 'at most 50 characters'),
    ('decimal', '1e30', 'digits'),
    ('decimal', '0.1234567890123456789', 'decimal places'),
    ('moment', '9999-12-31T23:00:00-05:00', 'out of range'),
    ('moment', '0001-01-01T00:30:00+01:00', 'out of range'),
    ('duration', 'P9999999999D', ''),
    ('text', 'lone \ud800 surrogate', 'surrogate'),
    ('blob', 5, 'not binary data'),
    ('cqrs_updated', None, 'NULL'),
    ('cqrs_revision', None, ''),
    ('cqrs_revision', 2 ** 31, 'outside'),
    ('cqrs_revision', -1, 'outside'),
    ('ip', '2024-02-30', 'IP'),
], ids=lambda v: str(v)[:30])
def test_a_value_no_column_can_hold_is_dead_lettered_with_its_reason_and_nothing_is_written(
        letters, retries, field, value, reason):
    if field == 'small' and connection.vendor == 'sqlite':
        pytest.skip('SQLite integer columns hold 64 bits whatever the field type')
    if field == 'ip' and connection.vendor == 'sqlite':
        pytest.skip('SQLite keeps an IP address as text')
    body = envelope(**{field: value})

    assert apply_envelope.run(body) == 'dead_lettered'

    [letter] = letters
    assert letter['error']['reason'] == 'bad input'
    assert field in letter['error']['message'] or field in ('cqrs_revision', 'ip')
    assert reason in letter['error']['message']
    assert retries == []
    assert not ReplicaAllFields.objects.exists()


def test_values_at_the_edges_of_what_a_column_holds_are_applied(letters, retries):
    body = envelope(big=2 ** 63 - 1, small=32767, positive=0, char='x' * 50, decimal='123456789012345.123456789012345',
                    moment='9999-12-31T23:59:59.999999+00:00', duration='-P1DT00H00M01S', text='ok ✓')

    assert apply_envelope.run(body) == 'created'
    row = ReplicaAllFields.objects.get()
    assert (row.big, row.small, row.char) == (2 ** 63 - 1, 32767, 'x' * 50)
    assert letters == [] and retries == []


@pytest.mark.skipif(connection.vendor != 'postgresql', reason='NUL is refused by PostgreSQL text only')
def test_text_holding_nul_is_dead_lettered_on_postgresql(letters, retries):
    assert apply_envelope.run(envelope(text='a \x00 b')) == 'dead_lettered'

    assert 'NUL' in letters[0]['error']['message']
    assert retries == [] and not ReplicaAllFields.objects.exists()


@pytest.mark.parametrize(('time_zone', 'moment'), [('Etc/GMT+10', '9999-12-31T23:00:00'),
                                                   ('Etc/GMT-14', '0001-01-01T00:30:00')])
def test_a_naive_datetime_outside_utcs_range_in_the_replicas_time_zone_is_dead_lettered(letters, retries,
                                                                                         time_zone, moment):
    with override_settings(TIME_ZONE=time_zone):
        assert apply_envelope.run(envelope(moment=moment)) == 'dead_lettered'

    assert 'moment' in letters[0]['error']['message']
    assert retries == [] and not ReplicaAllFields.objects.exists()
