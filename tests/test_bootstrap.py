"""First-run sync (``cqrs_celery.bootstrap``) on kombu's ``memory://`` transport (tier ii): which
replica tables ask, where the request goes, and what the master's worker sends back."""

import logging
import uuid
from types import SimpleNamespace

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from kombu import Queue

from cqrs_celery import bootstrap, topology
from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import Author
from tests.replica_app.models import ReplicaAuthor


@pytest.fixture
def memory_app():
    app = Celery('bootstrap-test', broker='memory://', set_as_current=False)
    with override_settings(CQRS={**settings.CQRS, 'app': app}):
        yield app
    app.close()


@pytest.fixture
def master_queue(memory_app):
    """A master worker's queue, bound to ``cqrs_bootstrap`` as its worker's start binds it; yields a
    function taking the requests off it."""
    name = f'master_{uuid.uuid4().hex[:8]}'
    memory_app.conf.task_default_queue = name
    memory_app.amqp.queues.select_add(name)
    entity = bootstrap.install_request_queue(memory_app)
    with memory_app.connection_for_write() as conn:
        channel = conn.default_channel
        entity(channel).declare()

        def take():
            queue, bodies = Queue(name)(channel), []
            while (message := queue.get(no_ack=True, accept=['json'])) is not None:
                bodies.append((message.headers['task'], message.decode()[0]))
            return bodies

        try:
            yield take
        finally:
            for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key)
            channel.queue_delete(name)


def test_a_master_worker_binds_the_queue_it_consumes_to_the_bootstrap_exchange_for_each_master_model(memory_app):
    name = f'master_{uuid.uuid4().hex[:8]}'
    memory_app.conf.task_default_queue = name
    memory_app.amqp.queues.select_add(name)

    entity = bootstrap.install_request_queue(memory_app)

    routes = {(r['exchange'], r['routing_key']) for r in topology.describe(entity)}
    assert ('cqrs_bootstrap', 'author') in routes and ('cqrs_bootstrap', 'gadget') in routes
    assert (name, name) in routes  # Celery's own route to the queue stays
    assert memory_app.amqp.queues.consume_from[name] is entity


def test_a_worker_that_does_not_consume_the_bootstrap_queue_binds_nothing(memory_app):
    memory_app.amqp.queues.select_add('something_else')
    with override_settings(CQRS={**settings.CQRS, 'app': memory_app,
                                 'master': {**settings.CQRS['master'], 'bootstrap_queue': 'masters_own'}}):
        assert bootstrap.install_request_queue(memory_app) is None


@pytest.mark.django_db
def test_only_empty_tables_that_never_received_anything_need_a_first_run_sync():
    assert bootstrap.needs_bootstrap(ReplicaAuthor)
    ReplicaTombstone.objects.create(cqrs_id='author', pk_value='1', pk_hash='1', revision=3)
    assert not bootstrap.needs_bootstrap(ReplicaAuthor)
    ReplicaTombstone.objects.all().delete()
    ReplicaAuthor.objects.create(id=1, name='Ann', cqrs_revision=0, cqrs_updated=timezone.now())
    assert not bootstrap.needs_bootstrap(ReplicaAuthor)


@pytest.mark.django_db
def test_a_replica_worker_asks_the_master_for_each_empty_table_through_the_bootstrap_exchange(
        master_queue, caplog):
    ReplicaAuthor.objects.create(id=1, name='Ann', cqrs_revision=0, cqrs_updated=timezone.now())
    with caplog.at_level(logging.INFO, logger='cqrs_celery.bootstrap'):
        asked = bootstrap.request_missing('replica_a')

    assert 'author' not in asked and 'book' in asked and 'manual_note' not in asked  # a raw replica has no table
    requests = master_queue()
    assert ('cqrs_celery.bootstrap_sync', ['book', 'replica_a']) in requests
    assert len(requests) == len(asked)
    assert 'cqrs_id=book queue=replica_a: the table is empty, asked the master for a full sync' in caplog.text


@pytest.mark.django_db
def test_a_request_no_master_worker_takes_is_logged_with_the_command_to_run(memory_app, caplog):
    with caplog.at_level(logging.WARNING, logger='cqrs_celery.bootstrap'):
        assert bootstrap.request_missing('replica_a') == []

    assert 'no master worker takes first-run sync requests' in caplog.text
    assert 'manage.py cqrs_sync --cqrs-id author --queue replica_a' in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_master_answers_with_directed_syncs_of_every_row_to_that_queue_only():
    with capture_envelopes() as sent:
        authors = [Author.objects.create(name=f'author {i}') for i in range(3)]
        sent.clear()
        result = bootstrap.bootstrap_sync('author', 'new_replica')

    assert result == '3 author rows sent to queue new_replica'
    assert [(e.signal_type.value, e.instance_pk, e.queue, e.forced) for e in sent] == [
        ('SYNC', a.pk, 'new_replica', False) for a in authors]


@pytest.mark.parametrize(('cqrs_id', 'queue'), [('nope', 'replica_a'), ('author', 'bad queue'), ('author', None)])
def test_the_master_refuses_a_request_for_a_model_it_does_not_own_or_a_queue_that_is_no_queue_name(
        cqrs_id, queue, caplog):
    assert bootstrap.bootstrap_sync(cqrs_id, queue) == 'refused'
    assert 'refused a first-run sync request' in caplog.text


def test_a_worker_ready_outside_the_replica_queue_asks_nothing(memory_app):
    memory_app.amqp.queues.select_add('celery')
    sender = SimpleNamespace(app=memory_app)
    bootstrap.on_worker_ready(sender=sender)  # consumes 'celery', not CQRS['queue']: no database access
