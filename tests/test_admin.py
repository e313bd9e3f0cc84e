"""Django admin through the test client: resync actions, read-only outbox and tombstone views."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from cqrs_celery import SignalType
from cqrs_celery.models import MasterTombstone, OutboxEvent, ReplicaTombstone
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import Author, Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(client):
    user = User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    client.force_login(user)
    return client


def changelist(model):
    return reverse(f'admin:{model._meta.app_label}_{model._meta.model_name}_changelist')


def authors(count):
    with capture_envelopes():
        return [Author.objects.create(name=f'a{i}') for i in range(count)]


def test_sync_items_sends_the_selected_rows_to_every_replica(client):
    rows = authors(3)

    with capture_envelopes() as sent:
        response = client.post(changelist(Author), {'action': 'sync_items',
                                                    '_selected_action': [rows[0].pk, rows[2].pk]}, follow=True)

    assert sorted(e.instance_pk for e in sent) == [rows[0].pk, rows[2].pk]
    assert {(e.signal_type, e.queue, e.forced) for e in sent} == {(SignalType.SYNC, None, False)}
    assert '2 successfully synced to every replica.' in response.content.decode()


def test_sync_to_one_queue_asks_for_the_queue_then_sends_there_only(client):
    rows = authors(2)
    selected = {'action': 'sync_items_to_queue', '_selected_action': [r.pk for r in rows]}

    with capture_envelopes() as sent:
        form = client.post(changelist(Author), selected)
    assert sent == []
    page = form.content.decode()
    assert form.status_code == 200 and 'replica_a' in page and 'replica_b' in page and 'cqrs_queue' in page

    with capture_envelopes() as sent:
        response = client.post(changelist(Author), {**selected, 'cqrs_confirm': 'yes',
                                                    'cqrs_queue_choice': 'replica_b'}, follow=True)

    assert sorted(e.instance_pk for e in sent) == sorted(r.pk for r in rows)
    assert {(e.queue, e.forced) for e in sent} == {('replica_b', False)}
    assert '2 successfully synced to queue replica_b.' in response.content.decode()


def test_a_typed_queue_with_force_sends_forced_syncs_for_a_non_id_primary_key(client):
    with capture_envelopes():
        Item.objects.create(sku='s/1', name='n')

    with capture_envelopes() as sent:
        client.post(changelist(Item), {'action': 'sync_items_to_queue', '_selected_action': ['s/1'],
                                       'cqrs_confirm': 'yes', 'cqrs_queue': 'other_service', 'cqrs_force': '1'})

    assert [(e.instance_pk, e.queue, e.forced) for e in sent] == [('s/1', 'other_service', True)]


def test_a_bad_queue_name_shows_the_form_again_with_an_error(client):
    rows = authors(1)

    with capture_envelopes() as sent:
        response = client.post(changelist(Author), {'action': 'sync_items_to_queue', '_selected_action': [rows[0].pk],
                                                    'cqrs_confirm': 'yes', 'cqrs_queue': 'bad name!'})

    assert sent == [] and response.status_code == 200
    assert 'Choose a queue' in response.content.decode()


def test_the_sync_actions_need_the_change_permission(client):
    authors(1)
    viewer = User.objects.create_user('viewer', password='pw', is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename='view_author'))
    client.force_login(viewer)

    page = client.get(changelist(Author)).content.decode()

    assert 'sync_items' not in page


def test_the_sync_actions_are_offered_on_the_changelist_but_not_in_a_popup(client):
    authors(1)

    assert 'value="sync_items_to_queue"' in client.get(changelist(Author)).content.decode()
    assert 'sync_items' not in client.get(changelist(Author) + '?_popup=1').content.decode()


def test_the_outbox_is_listed_read_only_with_pending_and_set_aside_views(client):
    OutboxEvent.objects.create(cqrs_id='author', pk_value='1')
    OutboxEvent.objects.create(cqrs_id='author', pk_value='2', set_aside=True, attempts=9, error='broker said no')

    everything = client.get(changelist(OutboxEvent)).content.decode()
    aside = client.get(changelist(OutboxEvent) + '?state=set_aside').content.decode()
    event = OutboxEvent.objects.get(pk_value='1')
    detail = client.get(reverse('admin:cqrs_celery_outboxevent_change', args=[event.pk]))

    assert 'broker said no' in everything and '2 outbox events' in everything
    assert 'broker said no' in aside and '1 outbox event' in aside
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert client.get(reverse('admin:cqrs_celery_outboxevent_add')).status_code == 403
    assert client.post(reverse('admin:cqrs_celery_outboxevent_delete', args=[event.pk]), {'post': 'yes'}).status_code \
        == 403


def test_the_retry_action_publishes_the_selected_set_aside_events_again(client):
    with capture_envelopes():
        author = Author.objects.create(name='a')
    OutboxEvent.objects.all().delete()
    event = OutboxEvent.objects.create(cqrs_id='author', pk_value=str(author.pk), set_aside=True, attempts=9)

    with capture_envelopes() as sent:
        response = client.post(changelist(OutboxEvent), {'action': 'retry_set_aside', '_selected_action': [event.pk]},
                               follow=True)

    assert '1 set-aside events put back in line' in response.content.decode()
    assert [e.instance_pk for e in sent] == [author.pk]
    assert not OutboxEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.parametrize('model', [MasterTombstone, ReplicaTombstone])
def test_tombstones_are_listed_read_only(client, model):
    model.objects.create(cqrs_id='author', pk_value='41', revision=7)

    page = client.get(changelist(model)).content.decode()

    assert '41' in page and 'author' in page
    assert client.get(reverse(f'admin:cqrs_celery_{model._meta.model_name}_add')).status_code == 403


def test_reconciliation_runs_are_listed_read_only_when_recorded(client):
    from django.apps import apps

    run_model = apps.get_app_config('cqrs_celery').models.get('reconciliationrun')
    if run_model is None:
        pytest.skip('reconciliation runs are not in this release')
    run_model.objects.create(run_id='r1', side='master', cqrs_id='author', queue='replica_q')

    page = client.get(changelist(run_model)).content.decode()

    assert 'replica_q' in page
    assert client.get(reverse('admin:cqrs_celery_reconciliationrun_add')).status_code == 403
