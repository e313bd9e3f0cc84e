"""When a task takes queued messages along (``cqrs_celery.replica.gather``), and when it does not.

Tier i/ii: the taking itself, with RabbitMQ and Redis, is shown by ``tests/broker/test_gathering.py``.
"""

import os
from types import SimpleNamespace

import pytest

from cqrs_celery.producer import set_sender
from cqrs_celery.replica import gather

DELIVERED = SimpleNamespace(delivery_info={'routing_key': 'replica_a'}, is_eager=False, called_directly=False)


@pytest.fixture
def no_test_sender():
    previous = set_sender(None)
    yield
    set_sender(previous)
    vars(gather._link).clear()  # this thread's connection state back to the class defaults


@pytest.mark.parametrize('request_', [
    SimpleNamespace(delivery_info=None, is_eager=False, called_directly=False),
    SimpleNamespace(delivery_info={'routing_key': 'replica_a'}, is_eager=True, called_directly=False),
    SimpleNamespace(delivery_info={'routing_key': 'replica_a'}, is_eager=False, called_directly=True),
    SimpleNamespace(),
], ids=['not delivered', 'eager', 'called directly', 'no request'])
def test_a_task_that_no_worker_delivered_takes_nothing(request_, no_test_sender):
    assert gather.take(request_, 'replica_a', 100) == []


@pytest.mark.parametrize(('queue', 'room'), [(None, 100), ('', 100), ('replica_a', 0), ('replica_a', -5)])
def test_without_a_queue_or_room_nothing_is_taken(queue, room, no_test_sender):
    assert gather.take(DELIVERED, queue, room) == []


def test_under_a_test_sender_nothing_is_taken():
    from cqrs_celery.testing import capture_envelopes

    with capture_envelopes():
        assert gather.take(DELIVERED, 'replica_a', 100) == []


def test_a_broker_that_would_not_redeliver_what_a_dead_process_held_is_never_taken_from(no_test_sender):
    # The test app's broker is kombu's memory transport (like the filesystem one: no redelivery).
    assert gather.take(DELIVERED, 'replica_a', 100) == []
    assert gather._link.queue is None and gather._link.paused_until == float('inf')


def test_taking_stops_once_the_messages_taken_reach_max_message_size_bytes(no_test_sender, monkeypatch):
    from django.conf import settings
    from django.test import override_settings
    from kombu import Queue

    from cqrs_celery.constants import TASK_NAME
    from tests.celery_app import app
    from tests.test_dead_letters_memory import item_envelope

    with app.connection_for_write() as connection:
        queue = Queue('gather_bytes')(connection.channel())
        queue.declare()
        for number in range(6):
            envelope = item_envelope(number, f'sku-{number}').to_wire()
            envelope['instance_data']['name'] = 'x' * 1000
            app.send_task(TASK_NAME, args=[envelope], queue=Queue('gather_bytes'), connection=connection)
        monkeypatch.setattr(gather, '_bound_queue', lambda name: queue)
        with override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS['replica'],
                                                                   'max_message_size': 2048}}):
            taken = gather.take(DELIVERED, 'gather_bytes', 100)
        assert len(taken) == 2  # each body is over 1,024 bytes: the second reaches 2,048
        assert [row.instance_pk for item in taken for row in item.rows] == ['sku-0', 'sku-1']
        gather.acknowledge(taken)
        assert all(item.message.acknowledged for item in taken)
        assert queue.get(no_ack=True) is not None  # the rest wait in the queue
        queue.purge()


def test_after_a_look_finds_the_queue_empty_the_process_does_not_look_again_for_a_moment(no_test_sender,
                                                                                           monkeypatch):
    from kombu import Queue

    from cqrs_celery.constants import TASK_NAME
    from tests.celery_app import app
    from tests.test_dead_letters_memory import item_envelope

    with app.connection_for_write() as connection:
        queue = Queue('gather_quiet')(connection.channel())
        queue.declare()
        looks = []
        monkeypatch.setattr(gather, '_bound_queue', lambda name: looks.append(name) or queue)
        gather._link.pid = os.getpid()  # (the fixture puts the class defaults back)
        clock = [1000.0]
        monkeypatch.setattr(gather.time, 'monotonic', lambda: clock[0])

        assert gather.take(DELIVERED, 'gather_quiet', 100) == []  # looks: empty
        app.send_task(TASK_NAME, args=[item_envelope(1, 'sku-1').to_wire()], queue=Queue('gather_quiet'),
                      connection=connection)
        clock[0] += gather._QUIET_FOR / 2
        assert gather.take(DELIVERED, 'gather_quiet', 100) == []  # does not look
        assert len(looks) == 1
        clock[0] += gather._QUIET_FOR
        taken = gather.take(DELIVERED, 'gather_quiet', 100)  # looks again, and takes what came meanwhile
        assert [row.instance_pk for item in taken for row in item.rows] == ['sku-1']
        gather.acknowledge(taken)
        assert gather.take(DELIVERED, 'gather_quiet', 100) == []  # a look that took something: looks again
        assert len(looks) == 3
        queue.purge()
