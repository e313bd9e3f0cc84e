"""Broker names and entities: pure name functions as tables (tier i), and the exchange/queue wiring
on kombu's ``memory://`` transport (tier ii): what a replica queue is bound to is what it receives."""

import uuid

import pytest
from kombu import Connection, Producer

from cqrs_celery import topology

# --- pure names ------------------------------------------------------------------------------


@pytest.mark.parametrize(('cqrs_id', 'name'), [
    ('book', 'cqrs.book'),
    ('all_fields', 'cqrs.all_fields'),
    ('billing.invoice', 'cqrs.billing.invoice'),
    ('Order-Line', 'cqrs.Order-Line'),
])
def test_exchange_name_is_the_prefix_and_the_cqrs_id(cqrs_id, name):
    assert topology.exchange_name(cqrs_id) == name


@pytest.mark.parametrize(('cqrs_id', 'key'), [('book', 'book'), ('billing.invoice', 'billing.invoice')])
def test_broadcast_routing_key_is_the_cqrs_id(cqrs_id, key):
    assert topology.broadcast_routing_key(cqrs_id) == key


@pytest.mark.parametrize(('queue', 'key'), [('replica_a', 'replica_a'), ('billing:replica', 'billing:replica')])
def test_direct_routing_key_is_the_queue_name(queue, key):
    assert topology.direct_routing_key(queue) == key


@pytest.mark.parametrize(('queue', 'name'), [
    ('replica_a', 'dead_letter_replica_a'),
    ('billing.replica', 'dead_letter_billing.replica'),
])
def test_dead_letter_queue_name_prefixes_the_queue_name(queue, name):
    assert topology.dead_letter_queue_name(queue) == name


@pytest.mark.parametrize(('driver_type', 'family'), [
    ('amqp', 'amqp'),
    ('pyamqp', 'amqp'),
    ('librabbitmq', 'amqp'),
    ('redis', 'virtual'),
    ('filesystem', 'virtual'),
    ('memory', 'virtual'),
    ('sqs', 'virtual'),
])
def test_transport_family_of_a_driver_type(driver_type, family):
    assert topology.transport_family(driver_type) == family


@pytest.mark.parametrize(('url', 'family'), [
    ('amqp://guest@localhost//', 'amqp'),
    ('pyamqp://guest@localhost//', 'amqp'),
    ('redis://localhost:6379/0', 'virtual'),
    ('filesystem://', 'virtual'),
    ('memory://', 'virtual'),
])
def test_transport_family_of_what_kombu_reports_for_a_broker_url(url, family):
    assert topology.transport_family(Connection(url).transport.driver_type) == family


@pytest.mark.parametrize(('family', 'exchange_type'), [('amqp', 'fanout'), ('virtual', 'direct')])
def test_broadcast_exchange_type_per_family(family, exchange_type):
    assert topology.broadcast_exchange_type(family) == exchange_type


@pytest.mark.parametrize(('family', 'exchange_type'), [('amqp', 'fanout'), ('virtual', 'direct')])
def test_broadcast_exchange_is_durable_persistent_and_named_for_the_cqrs_id(family, exchange_type):
    exchange = topology.broadcast_exchange('book', family)

    assert (exchange.name, exchange.type) == ('cqrs.book', exchange_type)
    assert exchange.durable
    assert exchange.delivery_mode == topology.PERSISTENT


def test_the_direct_exchange_is_durable_and_persistent():
    exchange = topology.direct_exchange()

    assert (exchange.name, exchange.type) == ('cqrs.direct', 'direct')
    assert exchange.durable
    assert exchange.delivery_mode == topology.PERSISTENT


# --- the replica queue -----------------------------------------------------------------------


def routes(queue):
    """Every (exchange, type, routing key, durable) the queue is bound to when declared."""
    found = {(b.exchange.name, b.exchange.type, b.routing_key, b.exchange.durable) for b in queue.bindings}
    if queue.exchange is not None and queue.exchange.name:
        found.add((queue.exchange.name, queue.exchange.type, queue.routing_key, queue.exchange.durable))
    return found


@pytest.mark.parametrize(('family', 'exchange_type'), [('amqp', 'fanout'), ('virtual', 'direct')])
def test_a_replica_queue_is_durable_and_bound_to_the_direct_exchange_and_each_cqrs_id(family, exchange_type):
    queue = topology.replica_queue('replica_a', ['book', 'author'], family)

    assert queue.name == 'replica_a'
    assert queue.durable
    assert routes(queue) == {
        ('cqrs.direct', 'direct', 'replica_a', True),
        ('cqrs.author', exchange_type, 'author', True),
        ('cqrs.book', exchange_type, 'book', True),
    }


def test_a_replica_queue_binds_each_cqrs_id_once():
    queue = topology.replica_queue('replica_a', ['book', 'book', 'author', 'book'], 'amqp')

    assert sorted(r[0] for r in routes(queue)) == ['cqrs.author', 'cqrs.book', 'cqrs.direct']


def test_a_replica_queue_of_no_models_is_still_reachable_through_the_direct_exchange():
    queue = topology.replica_queue('replica_a', [], 'virtual')

    assert routes(queue) == {('cqrs.direct', 'direct', 'replica_a', True)}


@pytest.mark.parametrize('family', ['amqp', 'virtual'])
def test_describe_lists_every_route_of_a_replica_queue_once(family):
    queue = topology.replica_queue('replica_a', ['book', 'author'], family)

    rows = topology.describe(queue)

    assert len(rows) == 3
    assert {(r['exchange'], r['type'], r['routing_key']) for r in rows} == {
        (name, exchange_type, key) for name, exchange_type, key, _ in routes(queue)
    }


# --- wiring on kombu's memory:// transport (tier ii) ----------------------------------------


class MemoryBroker:
    """Declares replica queues as a worker would, publishes as the producer does, and drains."""

    def __init__(self, connection):
        self.channel = connection.channel()
        self.family = topology.transport_family(connection.transport.driver_type)
        self.producer = Producer(self.channel)
        self.queues = []
        self.cqrs_ids = set()

    def declare(self, name, cqrs_ids):
        queue = topology.replica_queue(name, cqrs_ids, self.family)(self.channel)
        queue.declare()
        self.queues.append(queue)
        self.cqrs_ids.update(cqrs_ids)
        return queue

    def broadcast(self, cqrs_id, body):
        exchange = topology.broadcast_exchange(cqrs_id, self.family)
        self.producer.publish(body, exchange=exchange, routing_key=topology.broadcast_routing_key(cqrs_id),
                              serializer='json', declare=[exchange])

    def direct(self, queue, body):
        exchange = topology.direct_exchange()
        self.producer.publish(body, exchange=exchange, routing_key=topology.direct_routing_key(queue),
                              serializer='json', declare=[exchange])

    def drain(self, queue):
        bodies = []
        while (message := queue.get(no_ack=True, accept=['json'])) is not None:
            bodies.append(message.payload)
        return bodies

    def close(self):
        for queue in self.queues:
            queue.delete()
            # virtual transports keep routes in the exchange's table after the queue is gone
            for route in topology.describe(queue):
                self.channel.queue_unbind(queue.name, exchange=route['exchange'], routing_key=route['routing_key'])
        for cqrs_id in self.cqrs_ids:
            topology.broadcast_exchange(cqrs_id, self.family)(self.channel).delete()
        self.channel.close()


@pytest.fixture
def broker():
    with Connection('memory://') as connection:
        memory = MemoryBroker(connection)
        yield memory
        memory.close()


@pytest.fixture
def names():
    """Queue names and CQRS_IDs unique to the test: the memory broker is shared by the process."""
    suffix = uuid.uuid4().hex[:8]
    return lambda name: f'{name}_{suffix}'


def test_the_memory_transport_uses_direct_broadcast_exchanges(broker):
    assert broker.family == topology.VIRTUAL


def test_a_broadcast_reaches_every_queue_bound_to_the_cqrs_id_once(broker, names):
    book, author = names('book'), names('author')
    replica_a = broker.declare(names('replica_a'), [book, author])
    replica_b = broker.declare(names('replica_b'), [book])
    unrelated = broker.declare(names('replica_c'), [author])

    broker.broadcast(book, {'n': 1})

    assert broker.drain(replica_a) == [{'n': 1}]
    assert broker.drain(replica_b) == [{'n': 1}]
    assert broker.drain(unrelated) == []


def test_a_queue_bound_to_several_cqrs_ids_receives_each_of_them(broker, names):
    book, author = names('book'), names('author')
    replica = broker.declare(names('replica_a'), [book, author])

    broker.broadcast(book, {'model': 'book'})
    broker.broadcast(author, {'model': 'author'})

    assert broker.drain(replica) == [{'model': 'book'}, {'model': 'author'}]


def test_a_direct_message_reaches_only_the_named_queue(broker, names):
    book = names('book')
    replica_a = broker.declare(names('replica_a'), [book])
    replica_b = broker.declare(names('replica_b'), [book])

    broker.direct(replica_a.name, {'retry': 1})

    assert broker.drain(replica_a) == [{'retry': 1}]
    assert broker.drain(replica_b) == []


def test_broadcasts_wait_in_the_queue_until_consumed(broker, names):
    book = names('book')
    replica = broker.declare(names('replica_a'), [book])

    for n in range(3):
        broker.broadcast(book, {'n': n})

    assert broker.drain(replica) == [{'n': 0}, {'n': 1}, {'n': 2}]
    assert broker.drain(replica) == []


def test_declaring_a_replica_queue_twice_does_not_double_deliveries(broker, names):
    book = names('book')
    queue_name = names('replica_a')
    replica = broker.declare(queue_name, [book])
    broker.declare(queue_name, [book])

    broker.broadcast(book, {'n': 1})
    broker.direct(queue_name, {'n': 2})

    assert broker.drain(replica) == [{'n': 1}, {'n': 2}]


# --- a replica worker that does not consume its queue (issue 9, point 6) ----------------------


class FakeConsumer:
    """What ``worker_ready`` hands its receivers: the worker's consumer and the queues it reads."""

    def __init__(self, *names):
        from kombu import Queue

        self.task_consumer = type('TaskConsumer', (), {'queues': [Queue(name) for name in names]})()


def test_a_replica_worker_without_its_queue_warns_at_start_naming_the_fix(caplog):
    import logging

    from django.conf import settings

    from cqrs_celery.replica import queues

    own = settings.CQRS['queue']
    with caplog.at_level(logging.WARNING, logger='cqrs_celery.replica.queues'):
        queues.on_worker_ready(sender=FakeConsumer('celery'))
        warned = [r.getMessage() for r in caplog.records]
        caplog.clear()
        queues.on_worker_ready(sender=FakeConsumer(own, 'celery'))

    [line] = warned
    assert f'does not consume the replica queue {own}' in line
    assert f'-Q {own} ' in line and f'-Q {own},celery' in line
    assert not caplog.records, 'a worker that consumes its queue is not warned'
