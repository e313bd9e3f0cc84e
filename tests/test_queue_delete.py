"""Decommissioning a replica queue (issue 9, point 6): ``cqrs_queue_delete`` shows what it would
remove, refuses to drop messages without ``--force``, then unbinds the queue from every exchange
and deletes it (and its dead letters), so nothing is copied into it any more.

Tier ii: kombu's ``memory://`` transport, whose binding tables live in this process.
"""

import io
import uuid

import pytest
from celery import Celery
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from cqrs_celery import PublishError, SignalType, decommission
from cqrs_celery.envelope import Envelope
from cqrs_celery.producer import send_batch
from cqrs_celery.replica import dead_letters, queues


def item(sku):
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk=sku,
                    instance_data={'sku': sku, 'cqrs_revision': 0, 'cqrs_updated': '2024-05-06T07:08:09+00:00'})


@pytest.fixture
def replica():
    """A replica service on the memory broker: its queue (bound to the models' exchanges) and dead-letter queue."""
    app = Celery('queue_delete_memory', broker='memory://', set_as_current=False)
    queue = f'gone_{uuid.uuid4().hex[:10]}'
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'queue': queue}), \
            app.connection_for_write() as connection:
        channel = connection.default_channel
        queues.replica_queue(app)(channel).declare()
        dead_letters.dead_letter_queue(app)(channel).declare()
        yield app, channel, queue
        for name in (queue, f'dead_letter_{queue}'):
            decommission.delete(app, name)


def command(*args):
    out = io.StringIO()
    call_command('cqrs_queue_delete', *args, stdout=out)
    return out.getvalue().splitlines()


def bound_to(channel, exchange, queue):
    return [row for row in channel.get_table(exchange) if row[2] == queue]


def test_a_dry_run_shows_the_messages_and_bindings_and_changes_nothing(replica):
    app, channel, queue = replica
    send_batch([item('A'), item('B')])

    lines = command(queue, '--dead-letters', '--dry-run')

    assert lines[0].startswith(f'queue {queue}: 1 messages, bound to ')
    assert 'cqrs.item (item)' in lines[0] and f'cqrs.direct ({queue})' in lines[0]
    assert lines[1] == f'queue dead_letter_{queue}: 0 messages, bound to cqrs.direct (dead_letter_{queue})'
    assert lines[2] == f'dry run: {queue}, dead_letter_{queue} would be deleted'
    assert channel._size(queue) == 1
    assert bound_to(channel, 'cqrs.item', queue)


def test_a_queue_with_messages_is_deleted_only_with_force(replica):
    app, channel, queue = replica
    send_batch([item('A')])

    with pytest.raises(CommandError, match=f'{queue} holds 1 messages.*--force'):
        command(queue)
    assert channel._size(queue) == 1


def test_the_deleted_queue_is_unbound_everywhere_and_gets_no_more_copies(replica):
    app, channel, queue = replica
    send_batch([item('A')])

    lines = command(queue, '--dead-letters', '--force')

    assert lines[-2:] == [f'deleted {queue} (1 messages)', f'deleted dead_letter_{queue} (0 messages)']
    for exchange in ('cqrs.item', 'cqrs.direct'):
        assert not bound_to(channel, exchange, queue)
    assert not bound_to(channel, 'cqrs.direct', f'dead_letter_{queue}')
    assert not channel._has_queue(queue) and not channel._has_queue(f'dead_letter_{queue}')
    # memory:// is one broker for the whole test process: queues of other tests may still be bound.
    if any(row[0] == 'item' for row in channel.get_table('cqrs.item')):
        send_batch([item('B')])
    else:
        with pytest.raises(PublishError, match='no replica queue is bound'):
            send_batch([item('B')])
    assert not channel._has_queue(queue), 'the deleted queue got a copy'


def test_a_queue_that_does_not_exist_is_reported_and_nothing_is_done(replica):
    assert command('never_declared_queue') == ['queue never_declared_queue: does not exist', 'nothing to delete']


def test_a_name_that_cannot_be_a_queue_is_refused():
    with pytest.raises(CommandError, match='is not a queue name'):
        command('bad name')
