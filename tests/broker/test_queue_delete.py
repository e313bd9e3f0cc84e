"""``cqrs_queue_delete`` on real brokers (issue 9, point 6): a replica queue that collected
messages for a service that is gone is shown by a dry run, then unbound and deleted with its
dead-letter queue, and the master's next changes are no longer copied into it."""

from __future__ import annotations

from cqrs_celery import decommission
from cqrs_celery.master import publisher
from cqrs_celery.models import OutboxEvent
from tests.broker.harness import manage, queue_depth, wait_until
from tests.master_app.models import Item


def test_a_replica_queue_is_decommissioned_with_its_dead_letters(services, replica_db, master_app):
    queue = services.queue('gone')
    env = services.replica_env(queue, replica_db('replica_a'))
    services.declare_topology(queue, replica_db('replica_a'))
    for n in range(3):
        Item.objects.create(sku=f'gone-{n}', name='x', quantity=n)
    wait_until(lambda: not OutboxEvent.objects.exists(), timeout=30, message='every change published')
    wait_until(lambda: decommission.inspect(master_app, queue).messages >= 1, timeout=30,
               message='changes collected by the queue of the stopped service')
    held = decommission.inspect(master_app, queue).messages

    dry = manage(env, 'cqrs_queue_delete', queue, '--dead-letters', '--dry-run')

    assert f'queue {queue}: {held} messages' in dry
    assert f'queue dead_letter_{queue}: 0 messages' in dry
    assert f'dry run: {queue}, dead_letter_{queue} would be deleted' in dry
    assert decommission.inspect(master_app, queue).messages == held

    done = manage(env, 'cqrs_queue_delete', queue, '--dead-letters', '--force')

    assert f'deleted {queue} ({held} messages)' in done and f'deleted dead_letter_{queue}' in done
    for name in (queue, f'dead_letter_{queue}'):
        state = decommission.inspect(master_app, name)
        assert (state.exists, state.messages) == (False, 0), state
    Item.objects.create(sku='gone-after', name='x', quantity=9)
    # The event is published (RabbitMQ: to an exchange without that queue) or kept (Redis: no bound
    # queue at all); either way no copy reaches the deleted queue.
    publisher.wait_idle(10)
    assert not decommission.inspect(master_app, queue).exists
    assert queue_depth(services.broker_url, queue) == 0
