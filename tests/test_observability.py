"""Observability (issue 9, point 5): a signal at each stage — published, applied, skipped, retried,
dead-lettered — with cqrs_id, pk, revision, queue and latency; nothing built when nobody listens;
a failure of the model's own code logged with its traceback once, not at every retry.

Publishing runs on kombu's ``memory://`` transport (tier ii); the replica task runs in this process
with retries and dead letters captured (tier i).
"""

import contextlib
import datetime
import logging
import uuid

import pytest
import ujson
from celery import Celery
from django.conf import settings
from django.test import override_settings

from cqrs_celery import SignalType, observability, signals
from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope
from cqrs_celery.producer import publish_to_broker, send_batch
from cqrs_celery.replica import dead_letters, queues
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import ReplicaItem

THIS_QUEUE = settings.CQRS['queue']


def saved_ago(seconds):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)).isoformat()


def item(revision=0, sku='A', updated=None, **kwargs):
    data = {'sku': sku, 'name': 'apple', 'quantity': 1, 'cqrs_revision': revision,
            'cqrs_updated': updated or saved_ago(3)}
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk=sku, instance_data=data, **kwargs)


def wire(envelope):
    return ujson.loads(ujson.dumps(envelope.to_wire()))


@contextlib.contextmanager
def received(signal):
    """Every call of ``signal`` while the block runs, as a dict of its arguments."""
    calls = []

    def receiver(sender, **kwargs):
        kwargs.pop('signal')
        calls.append({'sender': sender, **kwargs})

    signal.connect(receiver)
    try:
        yield calls
    finally:
        signal.disconnect(receiver)


# --- master: published ------------------------------------------------------------------------


@pytest.fixture
def memory_replica():
    """A replica queue bound on the memory broker, with the project's settings pointing at it."""
    app = Celery('observability_memory', broker='memory://', set_as_current=False)
    queue = f'obsq_{uuid.uuid4().hex[:12]}'
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'queue': queue}), \
            app.connection_for_write() as connection:
        channel = connection.default_channel
        queues.replica_queue(app)(channel).declare()
        yield queue
        for exchange, routing_key, _ in list(channel.state.queue_bindings(queue)):
            channel.queue_unbind(queue, exchange, routing_key)
        channel.queue_delete(queue)


def test_a_published_batch_sends_its_cqrs_id_pks_revisions_exchange_and_latency(memory_replica):
    rows = [item(4, 'A', updated=saved_ago(2)), item(7, 'B', updated=saved_ago(5))]

    with received(signals.envelopes_published) as calls:
        send_batch(rows)

    [call] = calls
    assert (call['sender'], call['cqrs_id'], call['pks'], call['revisions']) == ('item', 'item', ['A', 'B'], [4, 7])
    assert (call['queue'], call['exchange'], call['routing_key']) == (None, 'cqrs.item', 'item')
    assert 5 <= call['latency'] < 60, 'from the oldest row of the batch'
    assert 0 <= call['duration'] < 10


def test_a_directed_publish_names_its_queue(memory_replica):
    with received(signals.envelopes_published) as calls:
        publish_to_broker(item(2), route_to=memory_replica)

    [call] = calls
    assert (call['pks'], call['revisions'], call['queue']) == (['A'], [2], memory_replica)
    assert call['exchange'] == 'cqrs.direct'


def test_nothing_is_built_for_a_signal_nobody_listens_to(memory_replica, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError('a payload was built although no receiver is connected')

    monkeypatch.setattr(observability, 'latency', never)
    assert not signals.envelopes_published.has_listeners()

    send_batch([item(1)])
    observability.handled(item(1), 'created', THIS_QUEUE)
    observability.retried(item(1), THIS_QUEUE, attempt=1, delay=1.0, exception=RuntimeError())


def test_a_receiver_that_raises_is_logged_and_never_breaks_the_publish(memory_replica, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError('metrics backend down')

    signals.envelopes_published.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger='cqrs_celery.observability'):
            publish_to_broker(item(3))
    finally:
        signals.envelopes_published.disconnect(broken)

    assert any('metrics backend down' in r.getMessage() for r in caplog.records)


# --- replica: applied, skipped, retried, dead-lettered -------------------------------------------


needs_db = pytest.mark.django_db


@needs_db
def test_an_applied_row_and_a_skipped_duplicate_send_their_fields_and_latency(letters, retries):
    envelope = item(5, updated=saved_ago(4))

    with received(signals.envelope_applied) as applied, received(signals.envelope_skipped) as skipped:
        apply_envelope.run(wire(envelope))
        apply_envelope.run(wire(envelope))

    [done] = applied
    assert (done['sender'], done['cqrs_id'], done['pk'], done['revision'], done['outcome'], done['queue']) == \
        ('item', 'item', 'A', 5, 'created', THIS_QUEUE)
    assert 4 <= done['latency'] < 60
    assert done['envelope'] == envelope
    [left] = skipped
    assert (left['pk'], left['revision'], left['outcome']) == ('A', 5, 'duplicate')


@pytest.fixture
def failing_create(monkeypatch):
    calls = []

    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        calls.append(mapped_data)
        raise ZeroDivisionError('the user code divided by zero')

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(cqrs_create))
    return calls


@needs_db
def test_retries_and_the_dead_letter_send_signals_with_attempts(letters, retries, failing_create):
    with override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS['replica'], 'CQRS_MAX_RETRIES': 2}}), \
            received(signals.envelope_retried) as retried, received(signals.envelope_dead_lettered) as dead:
        raw = wire(item(1))
        while apply_envelope.run(raw) == 'retrying':
            raw = wire(retries[-1][0])

    assert [(r['pk'], r['revision'], r['attempt'], r['queue']) for r in retried] == \
        [('A', 1, 1, THIS_QUEUE), ('A', 1, 2, THIS_QUEUE)]
    assert all(isinstance(r['exception'], ZeroDivisionError) and r['delay'] >= 0 for r in retried)
    [letter] = dead
    assert (letter['cqrs_id'], letter['pk'], letter['revision'], letter['queue']) == ('item', 'A', 1, THIS_QUEUE)
    assert (letter['attempts'], letter['reason']) == (3, 'failed after 2 retries')
    assert letters[0]['error']['attempts'] == 3, 'the first try and two retries'
    assert isinstance(letter['exception'], ZeroDivisionError)


@needs_db
def test_an_undecodable_body_is_dead_lettered_with_the_cqrs_id_it_names(letters):
    body = {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'item', 'instance_pk': 'Z', 'instance_data': 'not a dict'}

    with received(signals.envelope_dead_lettered) as dead:
        assert apply_envelope.run(body) == 'dead_lettered'

    [letter] = dead
    assert (letter['sender'], letter['cqrs_id'], letter['pk'], letter['envelope']) == ('item', 'item', 'Z', None)
    assert letter['attempts'] == 0


@needs_db
def test_a_failure_of_the_models_code_is_logged_with_its_traceback_once_not_at_every_retry(
        letters, retries, failing_create, caplog):
    with override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS['replica'], 'CQRS_MAX_RETRIES': 3}}), \
            caplog.at_level(logging.WARNING, logger='cqrs_celery'):
        raw = wire(item(1))
        while apply_envelope.run(raw) == 'retrying':
            raw = wire(retries[-1][0])

    assert len(failing_create) == 4
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert [r.levelname for r in with_traceback] == ['WARNING', 'ERROR'], 'the first failure and the last'
    assert all(r.exc_info[0] is ZeroDivisionError for r in with_traceback)
    assert 'in cqrs_create' in caplog.text and 'ZeroDivisionError: the user code divided by zero' in caplog.text
    assert 'attempt 4, no retry left' in with_traceback[1].getMessage()


# --- the dead-letter log line names what a raw body names ------------------------------------


ENVELOPE_TEXT = ujson.dumps({'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'book', 'instance_pk': 9,
                             'instance_data': {'cqrs_revision': 2}})


@pytest.mark.parametrize('raw', [
    pytest.param({'content_type': 'text/plain', 'text': ENVELOPE_TEXT}, id='another-content-type'),
    pytest.param({'content_type': 'application/json', 'size': 10 ** 7, 'truncated': True,
                  'base64': __import__('base64').b64encode(ENVELOPE_TEXT.encode()[:-5]).decode()}, id='truncated'),
    pytest.param(ENVELOPE_TEXT[:-3], id='cut-off-json'),
    pytest.param([ENVELOPE_TEXT, 'extra'], id='task-called-with-two-arguments'),
])
def test_the_dead_letter_log_names_the_cqrs_id_of_a_raw_body(raw):
    letter = dead_letters.record(error='refused', reason='bad input', attempts=0, raw=raw)

    assert dead_letters.named_in_letter(letter)['cqrs_id'] == 'book'


# --- Flower -------------------------------------------------------------------------------------


def test_the_librarys_tasks_are_ordinary_tasks_of_the_projects_app_under_stable_names():
    from tests.celery_app import app

    for name in ('cqrs_celery.apply', 'cqrs_celery.relay_outbox', 'cqrs_celery.clean_tombstones'):
        assert name in app.tasks, name
        assert app.tasks[name].name == name
        assert app.tasks[name].app is app


def test_the_dead_letter_log_line_of_a_refused_body_names_its_cqrs_id_pk_and_revision(memory_replica, caplog):
    raw = {'content_type': 'text/plain', 'text': ENVELOPE_TEXT}
    letter = dead_letters.record(error='content type refused', reason='not json', attempts=0, raw=raw)

    with caplog.at_level(logging.ERROR, logger='cqrs_celery.replica.dead_letters'):
        dead_letters.send(letter)

    [line] = [r.getMessage() for r in caplog.records if r.name == 'cqrs_celery.replica.dead_letters']
    assert 'cqrs_id=book pk=9 revision=2 ' in line
    assert line.endswith('attempts=0')
    assert dead_letters.purge(get_settings().celery_app()) == 1
