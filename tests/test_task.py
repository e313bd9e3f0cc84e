"""The replica's Celery task (DESIGN §4, §8): decode, apply, then ack, retry to this service's queue
only, or dead-letter with the error; bad input never raises.

Tier i: the task function runs in this process; retries and dead letters are captured instead of
published (``tasks.send`` and ``dead_letters.send`` are replaced).
"""

import base64
import datetime
import logging
import pickle
import socket
import types

import pytest
import ujson
from celery.exceptions import Reject
from django.conf import settings
from django.db import connection
from django.test import override_settings

from cqrs_celery import PublishError, SignalType
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope
from cqrs_celery.producer import set_sender
from cqrs_celery.replica import dead_letters, tasks
from cqrs_celery.replica.consumer import is_cqrs_message
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import ManualNoteSink, NoteEvent, ReplicaItem

pytestmark = pytest.mark.django_db

THIS_QUEUE = settings.CQRS['queue']
UPDATED_AT = '2024-05-06T07:08:09.123456+00:00'


def cqrs_replica_settings(**replica):
    return override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS.get('replica', {}), **replica}})


def item_data(revision=0, sku='A', name='apple', quantity=1):
    return {'sku': sku, 'name': name, 'quantity': quantity, 'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT}


def save(revision=0, **kwargs):
    """A SAVE of Item 'A' (ReplicaItem on this service)."""
    data = item_data(revision, **{k: kwargs.pop(k) for k in ('sku', 'name', 'quantity') if k in kwargs})
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk=data['sku'], instance_data=data,
                    **kwargs)


def wire(envelope):
    """The envelope as the worker receives it: JSON-decoded task argument."""
    return ujson.loads(ujson.dumps(envelope.to_wire()))


def stored(sku='A'):
    return ReplicaItem.objects.filter(pk=sku).values_list('name', 'quantity', 'cqrs_revision').first()


def assert_letter(letter, *, error_type, reason, attempts=0, message=''):
    """The error part of a dead letter is complete and says what happened."""
    error = letter['error']
    assert (error['type'], error['reason'], error['attempts']) == (error_type, reason, attempts)
    assert message in error['message']
    assert error['queue'] == THIS_QUEUE
    assert error['host'] == socket.gethostname()
    died = datetime.datetime.fromisoformat(error['time'])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(minutes=1) < died <= now
    assert ujson.loads(ujson.dumps(letter)) == letter  # the letter itself travels as JSON


# --- the task --------------------------------------------------------------------------------


def test_the_task_is_registered_under_one_name_and_acks_late():
    assert apply_envelope.name == TASK_NAME == 'cqrs_celery.apply'
    assert apply_envelope.acks_late is True
    assert apply_envelope.reject_on_worker_lost is True
    assert apply_envelope.ignore_result is True


def test_a_good_envelope_is_applied_and_its_outcome_returned(letters, retries):
    assert apply_envelope.run(wire(save(0))) == 'created'
    assert apply_envelope.run(wire(save(1, name='pear'))) == 'updated'
    assert apply_envelope.run(wire(save(1, name='pear'))) == 'duplicate'
    assert apply_envelope.run(wire(save(0))) == 'stale'

    assert stored() == ('pear', 1, 1)
    assert letters == retries == []


def test_a_good_envelope_applies_through_celerys_eager_apply(letters, retries):
    result = apply_envelope.apply(args=[wire(save(0))])

    assert result.successful()
    assert result.get() == 'created'
    assert stored() == ('apple', 1, 0)


@pytest.mark.parametrize('encode', [ujson.dumps, lambda w: ujson.dumps(w).encode()], ids=['text', 'bytes'])
def test_an_envelope_given_as_json_text_is_decoded(letters, retries, encode):
    assert apply_envelope.run(encode(save(0).to_wire())) == 'created'
    assert stored() == ('apple', 1, 0)


def test_a_directed_sync_for_another_queue_is_not_applied_here(letters, retries):
    envelope = save(0).replace(signal_type=SignalType.SYNC, queue='someone_else')

    assert apply_envelope.run(wire(envelope)) == 'not_for_me'
    assert stored() is None


# --- bad input -------------------------------------------------------------------------------

BAD_INPUT = {
    'not an object': (42, 'EnvelopeError', 'must be a JSON object, not int'),
    'a list': ([1, 2], 'EnvelopeError', 'must be a JSON object, not list'),
    'not JSON': ('{"v": 1,', 'EnvelopeError', 'not JSON'),
    'nothing': (None, 'EnvelopeError', 'must be a JSON object, not NoneType'),
    'an unknown version': ({**save(0).to_wire(), 'v': 99}, 'UnsupportedVersionError',
                           'envelope version 99 is not supported'),
    'a boolean version': ({**save(0).to_wire(), 'v': True}, 'UnsupportedVersionError', 'version True'),
    'missing keys': ({k: v for k, v in save(0).to_wire().items() if k not in ('cqrs_id', 'instance_data')},
                     'EnvelopeError', 'lacks required keys: cqrs_id, instance_data'),
    'an unknown signal type': ({**save(0).to_wire(), 'signal_type': 'UPSERT'}, 'EnvelopeError',
                               "unknown signal_type 'UPSERT'"),
    'a revision that is not an integer': ({**save(0).to_wire(), 'instance_data': item_data(revision='1')},
                                          'EnvelopeError', 'cqrs_revision must be an integer'),
    'negative retries': ({**save(0).to_wire(), 'retries': -1}, 'EnvelopeError', 'retries must be'),
    'a bad expiry': ({**save(0).to_wire(), 'expires': 'tomorrow'}, 'EnvelopeError', 'expires must be'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUT))
def test_a_body_that_is_not_a_valid_envelope_is_dead_lettered_with_the_raw_body(letters, retries, case):
    raw, error_type, message = BAD_INPUT[case]

    assert apply_envelope.run(raw) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type=error_type, reason='bad input', message=message)
    assert letter['envelope'] is None
    assert letter['raw'] == raw
    assert retries == []
    assert stored() is None


def test_an_unknown_cqrs_id_is_dead_lettered_with_its_envelope(letters, retries):
    envelope = save(0).replace(cqrs_id='no_such_model', retries=2)

    assert apply_envelope.run(wire(envelope)) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='UnknownCQRSIdError', reason='bad input', attempts=3,
                  message="CQRS_ID 'no_such_model'")
    assert letter['envelope'] == envelope.to_wire()
    assert letter['raw'] is None
    assert retries == []


@pytest.mark.parametrize(('field', 'value'), [('quantity', 'lots'), ('quantity', 1.5), ('quantity', [1]),
                                              ('name', {'first': 'apple'}), ('cqrs_updated', 'yesterday')])
def test_a_value_of_the_wrong_type_is_dead_lettered_not_retried(letters, retries, field, value):
    envelope = save(0)
    envelope = envelope.replace(instance_data={**envelope.instance_data, field: value})

    assert apply_envelope.run(wire(envelope)) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='DataError', reason='bad input', attempts=1, message=f'ReplicaItem.{field}')
    assert letter['envelope'] == wire(envelope)
    assert retries == []
    assert stored() is None


def test_a_value_the_database_refuses_is_dead_lettered_not_retried(letters, retries):
    if connection.vendor == 'sqlite':
        pytest.skip('SQLite stores a CharField value of any length')

    assert apply_envelope.run(wire(save(0, name='x' * 101))) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='DataError', reason='bad input', attempts=1)
    assert retries == []
    assert stored() is None


@pytest.mark.parametrize(('args', 'kwargs'), [(('extra',), {}), ((), {'queue': 'replica_a'}),
                                              (('extra',), {'more': 1})])
def test_a_task_call_with_more_than_the_envelope_is_dead_lettered(letters, retries, args, kwargs):
    raw = wire(save(0))

    assert apply_envelope.run(raw, *args, **kwargs) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='EnvelopeError', reason='bad input',
                  message='the task takes exactly one argument')
    assert letter['envelope'] is None
    assert letter['raw'] == [raw, *args, kwargs]
    assert stored() is None


def test_bad_input_does_not_stop_the_envelopes_behind_it(letters, retries):
    outcomes = [apply_envelope.run(raw) for raw in (42, wire(save(0)), 'garbage', wire(save(1, name='pear')))]

    assert outcomes == ['dead_lettered', 'created', 'dead_lettered', 'updated']
    assert stored() == ('pear', 1, 1)


# --- expiry ----------------------------------------------------------------------------------


def test_an_expired_envelope_is_dead_lettered_unapplied(letters, retries):
    expired_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    envelope = save(0, expires=expired_at)

    assert apply_envelope.run(wire(envelope)) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='EnvelopeError', reason='expired', message=f'expired at {expired_at.isoformat()}')
    assert letter['envelope'] == wire(envelope)
    assert stored() is None
    assert retries == []


def test_an_envelope_that_has_not_expired_yet_is_applied(letters, retries):
    envelope = save(0, expires=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5))

    assert apply_envelope.run(wire(envelope)) == 'created'
    assert letters == []


def test_an_expired_retry_is_dead_lettered_with_its_attempts(letters, retries):
    expired_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)

    assert apply_envelope.run(wire(save(0, expires=expired_at, retries=3))) == 'dead_lettered'

    assert_letter(letters[0], error_type='EnvelopeError', reason='expired', attempts=3)


# --- retries ---------------------------------------------------------------------------------


class ReplicaDown(RuntimeError):
    pass


@pytest.fixture
def failing_create(monkeypatch):
    """ReplicaItem.cqrs_create raises on every attempt; yields the attempts."""
    attempts = []

    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        attempts.append(mapped_data)
        raise ReplicaDown('replica database is read-only')

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(cqrs_create))
    return attempts


def run_until_settled(raw, retries, limit=20):
    """Run the task, feeding each retry back in as the worker would receive it; returns the outcomes."""
    outcomes = []
    for _ in range(limit):
        outcomes.append(apply_envelope.run(raw))
        if outcomes[-1] != 'retrying':
            return outcomes
        raw = wire(retries[-1][0])
    raise AssertionError(f'still retrying after {limit} runs')


@cqrs_replica_settings(CQRS_MAX_RETRIES=5, CQRS_RETRY_DELAY=0.2, retry_backoff=2, retry_backoff_max=2,
                       retry_jitter=False)
def test_a_failing_replica_is_retried_on_its_own_queue_until_the_limit_then_dead_lettered(
        letters, retries, failing_create):
    original = save(0)

    outcomes = run_until_settled(wire(original), retries)

    assert outcomes == ['retrying'] * 5 + ['dead_lettered']
    assert len(failing_create) == 6
    assert [route_to for _, route_to, _ in retries] == [THIS_QUEUE] * 5
    assert [countdown for _, _, countdown in retries] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2])
    assert [envelope.retries for envelope, _, _ in retries] == [1, 2, 3, 4, 5]
    # a retry is the same envelope with the attempt count: not a directed sync, nothing else changed
    assert all(envelope == original.replace(retries=n) for n, (envelope, _, _) in enumerate(retries, 1))
    [letter] = letters
    assert_letter(letter, error_type='ReplicaDown', reason='failed after 5 retries', attempts=6,
                  message='replica database is read-only')
    assert letter['envelope'] == wire(original.replace(retries=5))
    assert stored() is None


@cqrs_replica_settings(retry_jitter=True, CQRS_RETRY_DELAY=4, retry_backoff=2, retry_backoff_max=100)
def test_the_retry_countdown_comes_from_the_models_retry_policy(letters, retries, failing_create):
    apply_envelope.run(wire(save(0, retries=2)))

    [(envelope, route_to, countdown)] = retries
    assert (envelope.retries, route_to) == (3, THIS_QUEUE)
    assert 8 <= countdown <= 16


def test_a_back_off_longer_than_the_broker_allows_travels_in_hops_until_its_time(
        letters, retries, failing_create, monkeypatch):
    monkeypatch.setattr(tasks, 'max_retry_delay', lambda: 0.3)

    with cqrs_replica_settings(retry_jitter=False, CQRS_RETRY_DELAY=10, retry_backoff_max=60):
        apply_envelope.run(wire(save(0)))

    [(retry, route_to, countdown)] = retries
    assert countdown == 0.3, 'one message never waits in a worker longer than the broker allows'
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now + datetime.timedelta(seconds=9) < retry.not_before <= now + datetime.timedelta(seconds=10)

    # The hop arrives early: it is sent on, unapplied, with at most one more hop of countdown.
    assert apply_envelope.run(wire(retry)) == 'waiting'
    [_, (again, again_route, again_countdown)] = retries
    assert (again, again_route, again_countdown) == (retry, route_to, 0.3)
    assert len(failing_create) == 1  # the model was not called again

    # Once due, it is applied (and fails again here, so it is retried).
    due = retry.replace(not_before=now - datetime.timedelta(seconds=1))
    assert apply_envelope.run(wire(due)) == 'retrying'
    assert len(failing_create) == 2


def test_the_models_own_should_retry_cqrs_decides(letters, retries, failing_create, monkeypatch):
    seen = []

    def should_retry_cqrs(cls, current_retry, exception=None):
        seen.append((current_retry, type(exception)))
        return False

    monkeypatch.setattr(ReplicaItem, 'should_retry_cqrs', classmethod(should_retry_cqrs))

    assert apply_envelope.run(wire(save(0, retries=1))) == 'dead_lettered'

    assert seen == [(1, ReplicaDown)]
    assert retries == []
    assert_letter(letters[0], error_type='ReplicaDown', reason='failed after 1 retries', attempts=2)


def test_a_should_retry_cqrs_that_raises_leaves_the_decision_to_cqrs_max_retries(letters, retries, failing_create,
                                                                                 monkeypatch):
    def should_retry_cqrs(cls, current_retry, exception=None):
        raise KeyError('policy bug')

    monkeypatch.setattr(ReplicaItem, 'should_retry_cqrs', classmethod(should_retry_cqrs))

    with cqrs_replica_settings(CQRS_MAX_RETRIES=2):
        assert apply_envelope.run(wire(save(0, retries=1))) == 'retrying'
        assert apply_envelope.run(wire(save(0, retries=2))) == 'dead_lettered'

    assert [envelope.retries for envelope, _, _ in retries] == [2]
    assert_letter(letters[0], error_type='ReplicaDown', reason='failed after 2 retries', attempts=3)


@pytest.mark.parametrize('delay', ['soon', None, float('nan'), -1, 1e300, 10 ** 400], ids=str)
def test_any_retry_delay_a_model_gives_still_sends_the_retry_with_a_bounded_hop(letters, retries, failing_create,
                                                                                monkeypatch, delay):
    def get_cqrs_retry_delay(cls, current_retry):
        if delay is None:
            raise ZeroDivisionError('delay bug')
        return delay

    monkeypatch.setattr(ReplicaItem, 'get_cqrs_retry_delay', classmethod(get_cqrs_retry_delay))

    assert apply_envelope.run(wire(save(0))) == 'retrying'

    [(envelope, route_to, countdown)] = retries
    assert (envelope.retries, route_to) == (1, THIS_QUEUE)
    assert 0 <= countdown <= 900
    assert letters == []


def test_a_failure_whose_message_cannot_be_shown_is_still_dead_lettered(letters, retries, monkeypatch):
    class Unprintable(RuntimeError):
        def __str__(self):
            raise ValueError('no text')

    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        raise Unprintable

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(cqrs_create))

    with cqrs_replica_settings(CQRS_MAX_RETRIES=0):
        assert apply_envelope.run(wire(save(0))) == 'dead_lettered'

    assert_letter(letters[0], error_type='Unprintable', reason='failed after 0 retries', attempts=1,
                  message='cannot be shown')


def test_an_unexpected_error_in_the_task_dead_letters_the_message_with_its_raw_form(letters, retries, monkeypatch):
    def broken(envelopes, queue=None):
        raise MemoryError('out of memory in the group path')

    monkeypatch.setattr(tasks, 'apply_many', broken)
    batch = {'v': 2, 'cqrs_id': 'item', 'queue': None, 'expires': None, 'retries': 0,
             'rows': [save(0).row_wire(), save(0, sku='B').row_wire()]}

    assert apply_envelope.run(batch) == 'dead_lettered'

    [letter] = letters
    assert_letter(letter, error_type='MemoryError', reason='internal error', message='out of memory')
    assert letter['raw'] == batch


def test_a_retry_time_further_ahead_than_any_delay_is_dead_lettered_not_passed_on_for_ever(letters, retries):
    far = datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc)

    assert apply_envelope.run(wire(save(0, retries=1, not_before=far))) == 'dead_lettered'

    assert retries == []
    assert_letter(letters[0], error_type='EnvelopeError', reason='bad input', attempts=1, message='not_before')


def test_a_falsy_result_from_cqrs_create_is_retried(letters, retries, monkeypatch):
    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(lambda cls, *args, **kwargs: None))

    assert apply_envelope.run(wire(save(0))) == 'retrying'

    [(envelope, route_to, _)] = retries
    assert (envelope.retries, route_to) == (1, THIS_QUEUE)
    assert letters == []


def test_a_raw_replica_returning_false_is_retried(letters, retries, monkeypatch):
    monkeypatch.setattr(ManualNoteSink, 'cqrs_save', classmethod(lambda cls, *args, **kwargs: False))
    envelope = Envelope(signal_type=SignalType.SAVE, cqrs_id='manual_note', instance_pk=1,
                        instance_data={'id': 1, 'text': 'hi', 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT})

    assert apply_envelope.run(wire(envelope)) == 'retrying'

    assert [(e.retries, route_to) for e, route_to, _ in retries] == [(1, THIS_QUEUE)]
    assert not NoteEvent.objects.exists()


def test_a_retry_that_succeeds_applies_the_envelope(letters, retries, monkeypatch):
    calls = []
    original = ReplicaItem.cqrs_create.__func__

    def flaky(cls, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ReplicaDown('first attempt fails')
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(flaky))

    assert run_until_settled(wire(save(0)), retries) == ['retrying', 'created']
    assert stored() == ('apple', 1, 0)
    assert letters == []


def test_a_failed_attempt_is_logged_with_the_envelopes_fields(letters, retries, failing_create, caplog):
    with caplog.at_level(logging.WARNING, logger='cqrs_celery.replica.tasks'):
        apply_envelope.run(wire(save(0, correlation_id='corr-7')))

    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.replica.tasks']
    assert 'cqrs_id=item pk=A revision=0 correlation_id=corr-7' in record.getMessage()
    assert f'queue={THIS_QUEUE}' in record.getMessage()


def test_a_service_without_a_queue_dead_letters_a_failure_at_once(letters, retries, failing_create):
    with override_settings(CQRS={**settings.CQRS, 'queue': None}):
        assert apply_envelope.run(wire(save(0))) == 'dead_lettered'

    assert retries == []
    assert letters[0]['error']['reason'] == 'failed after 0 retries'


def test_a_retry_that_cannot_be_published_puts_the_message_back(letters, failing_create, caplog):
    def broker_down(envelope, route_to=None, countdown=None):
        raise PublishError('broker down')

    previous = set_sender(broker_down)
    try:
        with pytest.raises(Reject) as rejected:
            apply_envelope.run(wire(save(0)))
    finally:
        set_sender(previous)

    assert rejected.value.requeue is True
    assert letters == []
    assert any('could not send a retry' in r.getMessage() and 'cqrs_id=item pk=A revision=0' in r.getMessage()
               for r in caplog.records)


def test_a_dead_letter_that_cannot_be_published_puts_the_message_back(retries, monkeypatch):
    def broker_down(letter):
        raise PublishError('broker down')

    monkeypatch.setattr(dead_letters, 'send', broker_down)

    with pytest.raises(Reject) as rejected:
        apply_envelope.run(42)

    assert rejected.value.requeue is True


# --- dead letters: record and raw_form -------------------------------------------------------


def test_a_dead_letter_of_an_envelope_keeps_the_envelope_and_not_the_raw_body():
    envelope = save(3, retries=4)

    letter = dead_letters.record(error=ValueError('bad'), reason='bad input', attempts=4, envelope=envelope,
                                 raw={'ignored': True})

    assert letter['envelope'] == envelope.to_wire()
    assert letter['raw'] is None
    assert_letter(letter, error_type='ValueError', reason='bad input', attempts=4, message='bad')


def test_a_dead_letter_of_a_refused_body_has_a_text_error_and_the_raw_body():
    letter = dead_letters.record(error='content type refused', reason='not json', attempts=0, raw='body')

    assert letter['envelope'] is None
    assert letter['raw'] == 'body'
    assert_letter(letter, error_type='Rejected', reason='not json', message='content type refused')


@pytest.mark.parametrize(('body', 'content_type', 'expected'), [
    (b'{"v": 1}', 'application/json', '{"v": 1}'),
    (b'{"v": 1}', None, '{"v": 1}'),
    (bytearray(b'[1, 2]'), 'application/json', '[1, 2]'),
    (memoryview(b'{"a": "\xc3\xa9"}'), 'application/json', '{"a": "\u00e9"}'),
    (b'hello', 'text/plain', {'content_type': 'text/plain', 'text': 'hello'}),
    (b'a: 1', 'application/x-yaml', {'content_type': 'application/x-yaml', 'text': 'a: 1'}),
    ('already text', 'application/json', 'already text'),
    ({'already': 'decoded'}, 'application/json', {'already': 'decoded'}),
    ([1, 2], None, [1, 2]),
    (None, None, None),
])
def test_raw_form_keeps_text_bodies_as_text(body, content_type, expected):
    assert dead_letters.raw_form(body, content_type) == expected


def test_raw_form_keeps_a_binary_pickle_body_as_base64_with_its_content_type():
    body = pickle.dumps(({'v': 1}, {}, {}), protocol=pickle.HIGHEST_PROTOCOL)

    form = dead_letters.raw_form(body, 'application/x-python-serialize')

    assert form == {'content_type': 'application/x-python-serialize', 'base64': base64.b64encode(body).decode()}
    assert base64.b64decode(form['base64']) == body
    assert ujson.loads(ujson.dumps(form)) == form


def test_a_dead_letter_of_a_binary_body_travels_as_json():
    body = pickle.dumps({'v': 1, 'cqrs_id': 'item'}, protocol=2)

    letter = dead_letters.record(error='pickle refused', reason='not json', attempts=0,
                                 raw=dead_letters.raw_form(body, 'application/x-python-serialize'))

    assert ujson.loads(ujson.dumps(letter)) == letter
    assert base64.b64decode(letter['raw']['base64']) == body


# --- consumer: which messages are ours -------------------------------------------------------


def message(exchange=None, routing_key=None):
    return types.SimpleNamespace(delivery_info={'exchange': exchange, 'routing_key': routing_key})


@pytest.mark.parametrize(('msg', 'ours'), [
    (message('cqrs.book', 'book'), True),
    (message('cqrs.direct', THIS_QUEUE), True),
    (message('cqrs.direct', 'another_replica'), True),
    (message('', THIS_QUEUE), True),
    (message('celery', THIS_QUEUE), True),
    (message('celery', 'celery'), False),
    (message('', 'celery'), False),
    (message('cqrsbook', 'book'), False),
    (message(None, None), False),
    (types.SimpleNamespace(delivery_info=None), False),
    (types.SimpleNamespace(delivery_info={}), False),
])
def test_is_cqrs_message_recognises_messages_from_a_cqrs_exchange_or_to_this_queue(msg, ours):
    assert is_cqrs_message(msg) is ours


def test_without_a_queue_a_message_with_no_routing_key_is_not_taken_for_a_cqrs_message():
    with override_settings(CQRS={**settings.CQRS, 'queue': None}):
        assert is_cqrs_message(message('', None)) is False
        assert is_cqrs_message(types.SimpleNamespace(delivery_info={})) is False
        assert is_cqrs_message(message('cqrs.book', 'book')) is True
