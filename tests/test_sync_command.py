"""``manage.py cqrs_sync``: re-sends master rows as batched SYNC envelopes (tier i, envelopes captured)."""

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from cqrs_celery import PublishError, SignalType
from cqrs_celery.management.commands import cqrs_sync
from cqrs_celery.producer import set_sender
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import Author, Item

pytestmark = pytest.mark.django_db(transaction=True)


def sync(*args):
    out = StringIO()
    call_command('cqrs_sync', *args, stdout=out)
    return out.getvalue()


def test_every_row_is_sent_once_as_a_sync_with_its_current_state():
    with capture_envelopes():
        authors = [Author.objects.create(name=f'a{i}') for i in range(25)]
    with capture_envelopes() as sent:
        output = sync('--cqrs-id', 'author', '--batch', '7')

    assert '25 author rows sent to every replica' in output
    assert sorted(e.instance_pk for e in sent) == sorted(a.pk for a in authors)
    assert {e.signal_type for e in sent} == {SignalType.SYNC}
    assert all(e.queue is None and e.instance_data['name'] == f'a{authors.index(Author.objects.get(pk=e.instance_pk))}'
               for e in sent)


def test_a_filter_and_a_queue_send_only_those_rows_to_that_replica():
    with capture_envelopes():
        for i in range(10):
            Item.objects.create(sku=f'sku-{i}', name='n', quantity=i)
    with capture_envelopes() as sent:
        sync('--cqrs-id', 'item', '--filter', '{"quantity__gte": 6}', '--queue', 'replica_b')

    assert sorted(e.instance_pk for e in sent) == ['sku-6', 'sku-7', 'sku-8', 'sku-9']  # a non-`id` primary key
    assert {e.queue for e in sent} == {'replica_b'}


def test_rows_go_out_in_batch_messages_of_the_configured_size():
    with capture_envelopes():
        for i in range(12):
            Item.objects.create(sku=f'b-{i:02d}', name='n')
    calls = []
    original = cqrs_sync.send_batch

    def counting(envelopes):
        calls.append(len(envelopes))
        return original(envelopes)

    small_batches = override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'],
                                                                         'publish_batch_size': 5}})
    with small_batches, capture_envelopes(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(cqrs_sync, 'send_batch', counting)
        sync('--cqrs-id', 'item')
    assert calls == [5, 5, 2]


@pytest.mark.parametrize('args, message', [
    (['--cqrs-id', 'nope'], 'No master model has CQRS_ID'),
    (['--cqrs-id', 'item', '--filter', '[1]'], 'not a usable filter'),
    (['--cqrs-id', 'item', '--filter', '{"no_such_field": 1}'], 'not a usable filter'),
    (['--cqrs-id', 'item', '--batch', '0'], '--batch'),
])
def test_wrong_arguments_fail_with_a_command_error_that_says_why(args, message):
    with pytest.raises(CommandError, match=message):
        sync(*args)


def test_dry_run_counts_and_publishes_nothing():
    with capture_envelopes():
        Item.objects.create(sku='x', name='n')
    with capture_envelopes() as sent:
        output = sync('--cqrs-id', 'item', '--dry-run')
    assert '1 item rows would be sent' in output and sent == []


def test_a_broker_failure_is_a_command_error_naming_where_to_continue():
    with capture_envelopes():
        Item.objects.create(sku='x', name='n')

    def refuse(envelope):
        raise PublishError('broker down')

    previous = set_sender(refuse)
    try:
        with pytest.raises(CommandError, match='after 0 rows'):
            sync('--cqrs-id', 'item')
    finally:
        set_sender(previous)


def test_a_forced_sync_to_one_queue_repairs_a_replica_that_is_ahead():
    from cqrs_celery.testing import apply_in_process
    from tests.replica_app.models import ReplicaItem

    with apply_in_process():
        Item.objects.create(sku='ahead', name='master', quantity=1)
    ReplicaItem.objects.filter(pk='ahead').update(name='drifted', cqrs_revision=1000)

    with apply_in_process(queue='replica_a'):
        sync('--cqrs-id', 'item', '--queue', 'replica_a')
    assert ReplicaItem.objects.get(pk='ahead').name == 'drifted'  # an ordinary sync is stale there
    with apply_in_process(queue='replica_a'):
        sync('--cqrs-id', 'item', '--queue', 'replica_a', '--force')
    assert ReplicaItem.objects.values_list('name', 'cqrs_revision').get(pk='ahead') == ('master', 0)


def test_force_without_a_queue_is_refused():
    with pytest.raises(CommandError, match='--force needs --queue'):
        sync('--cqrs-id', 'item', '--force')
