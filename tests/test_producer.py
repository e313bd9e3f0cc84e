"""How the master publishes: pooled producers, publisher confirms, bounded timeouts (no broker needed)."""

import contextlib
import dataclasses
import logging
import types
import uuid

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings
from kombu import Queue

from cqrs_celery import SignalType, UnroutableError, signals, topology
from cqrs_celery.envelope import Envelope
from cqrs_celery.models import OutboxEvent
from cqrs_celery.producer import producer_pool, send, unroutable_counts
from tests.master_app.models import Publisher


def pool_connection(url: str, **master):
    app = Celery('producer-test', broker=url, set_as_current=False)
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'master': {**settings.CQRS['master'], **master}}):
        return producer_pool(app).connections.connection  # the connection the pool was created for


def test_publishing_on_rabbitmq_waits_for_publisher_confirms():
    connection = pool_connection('amqp://guest:guest@127.0.0.1:5672//')
    assert connection.transport_options['confirm_publish'] is True


@pytest.mark.parametrize('url', ['redis://127.0.0.1:6379/0', 'memory://'])
def test_other_brokers_have_no_confirms_to_wait_for(url):
    assert 'confirm_publish' not in pool_connection(url).transport_options


def test_connecting_is_bounded_by_the_publish_timeout():
    # (kombu keeps one pool per broker URL: a URL of its own, so an earlier pool is not reused)
    connection = pool_connection('amqp://guest:guest@127.0.0.1:5672/bounded', publish_timeout=0.75)
    assert connection.connect_timeout == 0.75
    assert connection.transport_options['max_retries'] == 1


def test_every_publish_of_one_app_shares_one_producer_pool():
    app = Celery('producer-test', broker='amqp://guest:guest@127.0.0.1:5672//', set_as_current=False)
    with override_settings(CQRS={**settings.CQRS, 'app': app}):
        assert producer_pool(app) is producer_pool(app)


# --- unroutable publishes (tier ii: memory:// broker) -----------------------------------------


@pytest.fixture
def memory_app():
    """The project's app on ``memory://``, publishing inline after commit."""
    app = Celery('unroutable-test', broker='memory://', set_as_current=False)
    master = {**settings.CQRS['master'], 'publisher': 'inline'}
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'master': master}):
        yield app
    app.close()


@contextlib.contextmanager
def unroutable_signals():
    calls = []

    def receiver(**kwargs):
        calls.append(kwargs)

    signals.unroutable.connect(receiver)
    try:
        yield calls
    finally:
        signals.unroutable.disconnect(receiver)


@pytest.mark.django_db(transaction=True)
def test_a_broadcast_no_replica_queue_is_bound_to_is_counted_signalled_logged_and_kept_on_a_virtual_broker(
        memory_app, caplog):
    before = unroutable_counts().get('publisher', 0)
    with unroutable_signals() as calls, caplog.at_level(logging.WARNING, logger='cqrs_celery.unroutable'):
        for name in ('a', 'b', 'c'):
            Publisher.objects.create(name=name)
        Publisher.cqrs.bulk_create([Publisher(name=f'bulk{i}') for i in range(4)])

    assert unroutable_counts()['publisher'] - before == 7
    assert [(c['cqrs_id'], c['exchange'], c['rows'], c['kept']) for c in calls] == [
        ('publisher', 'cqrs.publisher', 1, True)] * 3 + [('publisher', 'cqrs.publisher', 4, True)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('cqrs unroutable:')]
    assert len(lines) <= 1  # once per CQRS_ID per interval (an earlier test may have logged it already)
    # Redis may have lost its bindings in a restart: the outbox keeps the events and retries them.
    events = list(OutboxEvent.objects.values_list('attempts', 'error'))
    assert len(events) == 7
    assert all(attempts == 1 and error.startswith('UnroutableError: no replica queue is bound to cqrs.publisher')
               for attempts, error in events)


def test_a_broadcast_reaches_a_bound_queue_and_is_not_counted(memory_app):
    name = f'bound_{uuid.uuid4().hex[:8]}'
    with memory_app.connection_for_write() as conn:
        channel = conn.default_channel
        topology.replica_queue(name, ['author'], topology.VIRTUAL)(channel).declare()
        try:
            before = unroutable_counts().get('author', 0)
            send(Envelope(signal_type=SignalType.SYNC, cqrs_id='author', instance_pk=1,
                          instance_data={'id': 1, 'cqrs_revision': 0, 'cqrs_updated': None}))
            assert unroutable_counts().get('author', 0) == before
            assert Queue(name)(channel).get(no_ack=True) is not None
        finally:
            for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key)
            channel.queue_delete(name)


def test_a_directed_publish_to_a_queue_that_does_not_exist_fails(memory_app):
    envelope = Envelope(signal_type=SignalType.SYNC, cqrs_id='author', instance_pk=1,
                        instance_data={'id': 1, 'cqrs_revision': 0, 'cqrs_updated': None}, queue='no_such_queue')
    with pytest.raises(UnroutableError, match="no queue 'no_such_queue' is bound to cqrs.direct"):
        send(envelope)


def test_a_batch_is_encoded_once_and_reads_back_as_the_json_kombu_decodes(memory_app, monkeypatch):
    from kombu.utils import json as kombu_json

    from cqrs_celery import producer
    from cqrs_celery.envelope import decode_message

    name = f'once_{uuid.uuid4().hex[:8]}'
    encoded = []
    encode = producer.encode_json
    monkeypatch.setattr(producer, 'encode_json', lambda value: encoded.append(value) or encode(value))
    rows = [Envelope(signal_type=SignalType.SYNC, cqrs_id='author', instance_pk=pk,
                     instance_data={'id': pk, 'name': f'ünï "{pk}" \\ /', 'cqrs_revision': 0, 'cqrs_updated': None})
            for pk in range(1, 4)]
    rows[2] = dataclasses.replace(rows[2], meta={'note': 'a lone \ud800 surrogate', 'big': 2 ** 70})
    with memory_app.connection_for_write() as conn:
        channel = conn.default_channel
        topology.replica_queue(name, ['author'], topology.VIRTUAL)(channel).declare()
        try:
            producer.send_batch(rows)
            message = Queue(name)(channel).get(no_ack=True)
        finally:
            for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key)
            channel.queue_delete(name)

    # the batch body once (measured, then sent), then the call's small kwargs and embed parts
    assert [type(value) for value in encoded] == [dict, dict, dict] and encoded[0]['rows']
    assert message.content_type == 'application/json' and message.content_encoding == 'utf-8'
    assert '\\ud800' in bytes(message.body).decode('ascii')  # escaped, for the replica's gate to refuse
    args, kwargs, embed = kombu_json.loads(message.body)
    assert kwargs == {} and not any(embed.values())
    assert decode_message(args[0]) == rows


def _fresh_master(broker: str, publisher: str, then: str = '') -> str:
    """Run ``then`` in a fresh master process once ``django.setup()`` returned; its last output line.

    Every connection the process attempts is recorded in ``tried`` (nothing else connects: the
    database is SQLite).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'tests.settings', 'CQRS_TEST_DATABASE': 'sqlite',
           'CQRS_TEST_BROKER': broker, 'CQRS_TEST_PUBLISHER': publisher}
    script = ('import socket, sys\n'
              'tried = []\n'
              'real = socket.socket.connect\n'
              'socket.socket.connect = lambda self, address: (tried.append(address), real(self, address))[1]\n'
              'import django\n'
              'django.setup()\n' + then)
    done = subprocess.run([sys.executable, '-c', script], env=env, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _loaded_at_start(broker: str, publisher: str) -> str:
    """Whether a fresh master process has loaded redis's transport once started, and any connection it attempted."""
    return _fresh_master(broker, publisher,
                         "print(('loaded' if 'kombu.transport.redis' in sys.modules else 'not loaded')"
                         " + (f' and connected to {tried}' if tried else ''))\n")


#: A fresh master's first publish (a queue bound first): the modules it imports, printed.
_FIRST_PUBLISH = """
from cqrs_celery import SignalType, topology
from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope
from cqrs_celery.producer import send_batch
with get_settings().celery_app().connection_for_write() as conn:
    topology.replica_queue('first_publish', ['author'], topology.VIRTUAL)(conn.default_channel).declare()
before = set(sys.modules)
send_batch([Envelope(signal_type=SignalType.SAVE, cqrs_id='author', instance_pk=1,
                     instance_data={'id': 1, 'name': 'ann', 'cqrs_revision': 0, 'cqrs_updated': None})])
print(sorted(set(sys.modules) - before))
"""


def test_a_master_that_publishes_loads_its_broker_transport_at_start_up_without_connecting():
    assert _loaded_at_start('redis://127.0.0.1:1/0', 'thread') == 'loaded'
    assert _loaded_at_start('redis://127.0.0.1:1/0', 'inline') == 'loaded'


def test_a_master_that_leaves_publishing_to_the_relay_loads_no_transport_at_start_up():
    assert _loaded_at_start('redis://127.0.0.1:1/0', 'relay') == 'not loaded'


def test_a_broker_url_no_transport_serves_does_not_stop_the_start_up():
    assert _loaded_at_start('nosuchtransport://127.0.0.1/', 'thread') == 'not loaded'


def test_a_master_that_publishes_has_loaded_at_start_up_everything_its_first_publish_needs():
    assert _fresh_master('memory://', 'thread', _FIRST_PUBLISH) == '[]'


def test_a_publish_resolves_no_result_backend_and_adds_no_child_to_the_task_that_publishes(memory_app, monkeypatch):
    """Nobody waits on a cqrs message: no result backend is looked up for it (Celery's
    ``AsyncResult`` would), and a publishing task (the relay) does not collect one per message."""
    class PublishingTask:
        request = types.SimpleNamespace(id='relay-task', root_id='relay-task', delivery_info={})

        def add_trail(self, result):
            raise AssertionError(f'the publish added {result!r} to the children of the task that published')

    def refused(self):
        raise AssertionError("the publish read the app's result backend")

    monkeypatch.setattr(type(memory_app), 'backend', property(refused))
    monkeypatch.setattr(type(memory_app), 'current_worker_task', property(lambda self: PublishingTask()))
    name = f'bound_{uuid.uuid4().hex[:8]}'
    with memory_app.connection_for_write() as conn:
        channel = conn.default_channel
        topology.replica_queue(name, ['author'], topology.VIRTUAL)(channel).declare()
        try:
            send(Envelope(signal_type=SignalType.SYNC, cqrs_id='author', instance_pk=1,
                          instance_data={'id': 1, 'cqrs_revision': 0, 'cqrs_updated': None}))
            message = Queue(name)(channel).get(no_ack=True)
            assert message is not None and message.headers['parent_id'] == 'relay-task'
        finally:
            for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key)
            channel.queue_delete(name)
