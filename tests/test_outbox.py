"""The transactional outbox and the beat tasks (DESIGN §6, §10): an event row is written with the
change, published and deleted after commit, and whatever is left is published by the relay.

Tier i: publishes are captured (``capture_envelopes``) or refused by a failing sender; no broker.
"""

import contextlib
import datetime
import logging
from io import StringIO

import pytest
import ujson
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from cqrs_celery import ConfigurationError, PublishError, SignalType, beat
from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import decode
from cqrs_celery.master import outbox
from cqrs_celery.models import MasterTombstone, OutboxEvent, ReplicaTombstone
from cqrs_celery.producer import set_sender
from cqrs_celery.testing import capture_envelopes
from tests.celery_app import app as celery_app
from tests.master_app.models import Author, Item

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    """Raised inside ``transaction.atomic()`` to roll it back."""


@pytest.fixture(autouse=True)
def broker_up():
    """Every test starts with the broker-down pause off and leaves it off (monkeypatch restores it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outbox, '_broker_down_until', 0.0)
        yield


@pytest.fixture
def captured():
    with capture_envelopes() as envelopes:
        yield envelopes


@contextlib.contextmanager
def broker_down():
    """Every publish inside the block fails as an unreachable broker would; yields the attempts."""
    attempts = []

    def refuse(envelope):
        attempts.append(envelope)
        raise PublishError(f'broker down: {envelope.cqrs_id} pk={envelope.instance_pk!r}')

    previous = set_sender(refuse)
    try:
        yield attempts
    finally:
        set_sender(previous)


def cqrs_master_settings(**master):
    """``override_settings`` of the ``CQRS['master']`` section, keeping the rest of the test settings."""
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS.get('master', {}), **master}})


def cqrs_retention(master, replica):
    """Tombstone retention of both sides, in seconds."""
    return override_settings(CQRS={
        **settings.CQRS,
        'master': {**settings.CQRS.get('master', {}), 'tombstone_retention': master},
        'replica': {**settings.CQRS.get('replica', {}), 'tombstone_retention': replica},
    })


def events():
    """(cqrs_id, pk_value, revision) of every outbox event, oldest first."""
    return list(OutboxEvent.objects.order_by('id').values_list('cqrs_id', 'pk_value', 'revision'))


def event_envelope(event_id):
    return decode(ujson.loads(OutboxEvent.objects.get(pk=event_id).envelope))


def stored_revision(model, pk):
    return model.objects.values_list('cqrs_revision', flat=True).get(pk=pk)


def age_events(seconds):
    """Make every outbox event look ``seconds`` old."""
    OutboxEvent.objects.update(created=timezone.now() - datetime.timedelta(seconds=seconds))


# --- written in the change's transaction -------------------------------------------------------


def test_a_save_writes_one_outbox_event_in_its_own_transaction(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')

        assert events() == [('author', str(author.pk), 0)]
        assert captured == []


def test_later_saves_in_the_transaction_rewrite_the_same_event_with_the_latest_state(captured):
    with transaction.atomic():
        author = Author.objects.create(name='first')
        [event_id] = OutboxEvent.objects.values_list('id', flat=True)
        author.name = 'second'
        author.save()
        author.name = 'final'
        author.save()

        assert list(OutboxEvent.objects.values_list('id', flat=True)) == [event_id]
        envelope = event_envelope(event_id)
        assert envelope.instance_data['name'] == 'final'
        assert envelope.revision == 2 == stored_revision(Author, author.pk)
        assert OutboxEvent.objects.get(pk=event_id).revision == 2


def test_each_changed_instance_of_a_transaction_gets_its_own_event(captured):
    with transaction.atomic():
        first, second = Author.objects.create(name='first'), Author.objects.create(name='second')
        first.save()
        Item.objects.create(sku='A', name='apple')
        second.save()

        assert sorted(events()) == sorted([('author', str(first.pk), 1), ('author', str(second.pk), 1),
                                           ('item', 'A', 0)])


def test_a_delete_after_a_save_in_the_transaction_turns_the_event_into_the_delete(captured):
    with transaction.atomic():
        item = Item.objects.create(sku='A', name='apple')
        item.delete()

        [event] = OutboxEvent.objects.all()
        assert event_envelope(event.pk).signal_type == SignalType.DELETE
        assert event.revision == 1

    assert [(e.signal_type, e.instance_pk, e.revision) for e in captured] == [(SignalType.DELETE, 'A', 1)]


def test_a_rolled_back_transaction_leaves_no_event(captured):
    author = Author.objects.create(name='Ann')
    captured.clear()

    with contextlib.suppress(Rollback), transaction.atomic():
        author.name = 'never committed'
        author.save()
        Item.objects.create(sku='A', name='never created')
        assert len(events()) == 2
        raise Rollback

    assert events() == []
    assert captured == []


def test_a_rolled_back_savepoint_reverts_the_event_to_the_state_before_it(captured):
    author = Author.objects.create(name='Ann')
    captured.clear()

    with transaction.atomic():
        author.name = 'kept'
        author.save()
        [event_id] = OutboxEvent.objects.values_list('id', flat=True)
        with contextlib.suppress(Rollback), transaction.atomic():
            author.name = 'undone'
            author.save()
            assert event_envelope(event_id).instance_data['name'] == 'undone'
            raise Rollback

        envelope = event_envelope(event_id)
        assert (envelope.instance_data['name'], envelope.revision) == ('kept', 1)

    [published] = captured
    assert (published.instance_data['name'], published.revision) == ('kept', 1)
    assert events() == []


def test_an_event_written_only_in_a_rolled_back_savepoint_is_gone(captured):
    with transaction.atomic():
        kept = Author.objects.create(name='kept')
        with contextlib.suppress(Rollback), transaction.atomic():
            Author.objects.create(name='undone')
            raise Rollback

        assert events() == [('author', str(kept.pk), 0)]

    assert [e.instance_pk for e in captured] == [kept.pk]


def test_a_row_saved_again_after_a_rolled_back_savepoint_does_not_take_over_another_rows_event(captured):
    """An event id seen inside a rolled-back savepoint may be given to another row's event later."""
    with transaction.atomic():
        Author.objects.create(name='first')
        with contextlib.suppress(Rollback), transaction.atomic():
            undone = Item.objects.create(sku='A', name='created in the savepoint')
            raise Rollback
        other = Item.objects.create(sku='B', name='created after the savepoint')
        Item.objects.create(sku='A', name='created again')

        assert sorted(e[:2] for e in events()) == sorted([('author', str(Author.objects.get().pk)),
                                                          ('item', 'A'), ('item', 'B')])

    assert sorted((e.cqrs_id, e.instance_pk) for e in captured) == sorted(
        [('author', Author.objects.get().pk), ('item', undone.pk), ('item', other.pk)])
    assert {e.instance_data['name'] for e in captured if e.cqrs_id == 'item'} == {
        'created after the savepoint', 'created again'}


def test_bulk_create_writes_one_event_per_row(captured):
    with transaction.atomic():
        items = Item.cqrs.bulk_create([Item(sku=sku, name=f'item {sku}') for sku in 'ABC'])

        assert sorted(events()) == [('item', 'A', 0), ('item', 'B', 0), ('item', 'C', 0)]

    assert sorted(e.instance_pk for e in captured) == [i.pk for i in items]
    assert events() == []


def test_a_row_saved_then_bulk_updated_in_one_transaction_keeps_one_event_with_the_last_state(captured):
    Item.cqrs.bulk_create([Item(sku=sku, name='old') for sku in 'AB'])
    captured.clear()

    with transaction.atomic():
        item = Item.objects.get(pk='A')
        item.quantity = 5
        item.save()
        Item.cqrs.bulk_update(Item.objects.all(), name='new')

        assert sorted(events()) == [('item', 'A', 2), ('item', 'B', 1)]

    assert sorted((e.instance_pk, e.instance_data['name'], e.instance_data['quantity'], e.revision)
                  for e in captured) == [('A', 'new', 5, 2), ('B', 'new', 0, 1)]


def test_a_rolled_back_bulk_update_leaves_no_event(captured):
    Item.cqrs.bulk_create([Item(sku=sku, name='old') for sku in 'AB'])
    captured.clear()

    with contextlib.suppress(Rollback), transaction.atomic():
        Item.cqrs.bulk_update(Item.objects.all(), name='new')
        raise Rollback

    assert events() == []
    assert captured == []


def test_events_of_a_bulk_create_that_could_not_be_published_are_relayed():
    with broker_down():
        Item.cqrs.bulk_create([Item(sku=sku, name=f'item {sku}') for sku in 'AB'])
    assert len(events()) == 2

    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 2

    assert sorted(e.instance_pk for e in captured) == ['A', 'B']
    assert events() == []


# --- published after commit ------------------------------------------------------------------


def test_after_commit_the_events_are_published_and_deleted(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')
        Item.objects.create(sku='A', name='apple')

    assert sorted((e.cqrs_id, e.instance_pk) for e in captured) == sorted([('author', author.pk), ('item', 'A')])
    assert events() == []
    assert outbox.pending() == 0


def test_a_save_in_autocommit_is_published_and_its_event_deleted(captured):
    author = Author.objects.create(name='Ann')

    assert [(e.instance_pk, e.revision) for e in captured] == [(author.pk, 0)]
    assert events() == []


def test_the_published_envelope_is_the_one_stored_in_the_outbox(captured, monkeypatch):
    stored = {}

    def hook(event_ids):
        stored.update({i: OutboxEvent.objects.get(pk=i).envelope for i in event_ids})

    monkeypatch.setattr(outbox, 'before_publish_hook', hook)
    Author.objects.create(name='Ann')

    [envelope] = captured
    assert [ujson.loads(text) for text in stored.values()] == [ujson.loads(ujson.dumps(envelope.to_wire()))]


def test_the_before_publish_hook_sees_the_committed_events_before_they_are_published(captured, monkeypatch):
    seen = []

    def hook(event_ids):
        seen.append((list(event_ids), OutboxEvent.objects.filter(id__in=event_ids).count(), len(captured)))

    monkeypatch.setattr(outbox, 'before_publish_hook', hook)
    with transaction.atomic():
        Author.objects.create(name='Ann')
        Author.objects.create(name='Bob')
        event_ids = list(OutboxEvent.objects.order_by('id').values_list('id', flat=True))

    assert [(sorted(ids), count, published) for ids, count, published in seen] == [(event_ids, 2, 0)]
    assert len(captured) == 2


def test_events_taken_by_someone_else_before_the_committer_publishes_are_not_published_twice(captured, monkeypatch):
    def relay_first(event_ids):
        outbox.relay(min_age=0)

    monkeypatch.setattr(outbox, 'before_publish_hook', relay_first)
    author = Author.objects.create(name='Ann')

    assert [e.instance_pk for e in captured] == [author.pk]
    assert events() == []


# --- a failed publish ------------------------------------------------------------------------


def test_a_failed_publish_keeps_the_event_and_the_save_succeeds():
    with broker_down() as attempts:
        author = Author.objects.create(name='Ann')

    assert [e.instance_pk for e in attempts] == [author.pk]
    assert Author.objects.filter(pk=author.pk, name='Ann').exists()
    assert events() == [('author', str(author.pk), 0)]


def test_a_failed_publish_is_logged_with_cqrs_id_pk_and_revision(caplog):
    with caplog.at_level(logging.WARNING, logger='cqrs_celery'), broker_down():
        author = Author.objects.create(name='Ann')

    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.master.outbox']
    assert record.levelno == logging.WARNING
    assert f'cqrs_id=author pk={author.pk} revision=0' in record.getMessage()
    assert 'broker down' in record.getMessage()


def test_the_relay_publishes_what_a_failed_publish_left_in_event_id_order_and_deletes_it():
    with broker_down():
        authors = [Author.objects.create(name=name) for name in ('a', 'b', 'c')]
        Item.objects.create(sku='A', name='apple')
        authors[0].name = 'a, renamed'
        authors[0].save()
    # one event per instance per transaction: the rename committed on its own has its own event
    assert len(events()) == 5

    with capture_envelopes() as captured:
        published = outbox.relay(min_age=0)

    assert published == 5
    assert [(e.cqrs_id, e.instance_pk, e.revision) for e in captured] == [
        ('author', authors[0].pk, 0), ('author', authors[1].pk, 0), ('author', authors[2].pk, 0), ('item', 'A', 0),
        ('author', authors[0].pk, 1)]
    assert captured[-1].instance_data['name'] == 'a, renamed'
    assert events() == []


def test_a_relay_that_fails_stops_and_keeps_the_rest_for_the_next_run(caplog):
    with broker_down():
        authors = [Author.objects.create(name=name) for name in ('a', 'b', 'c')]
    sent = []

    def fail_on_second(envelope):
        if len(sent) == 1:
            raise PublishError('broker went away')
        sent.append(envelope)

    previous = set_sender(fail_on_second)
    try:
        with caplog.at_level(logging.ERROR, logger='cqrs_celery.master.outbox'):
            published = outbox.relay(min_age=0)
    finally:
        set_sender(previous)

    assert published == 1
    assert [e.instance_pk for e in sent] == [authors[0].pk]
    assert [e[1] for e in events()] == [str(authors[1].pk), str(authors[2].pk)]
    assert any('relay stopped after 1 events' in r.getMessage() for r in caplog.records)


def test_the_relay_leaves_events_younger_than_min_age():
    with broker_down():
        old = Author.objects.create(name='old')
        age_events(120)
        young = Author.objects.create(name='young')

    with capture_envelopes() as captured:
        published = outbox.relay(min_age=60)

    assert published == 1
    assert [e.instance_pk for e in captured] == [old.pk]
    assert events() == [('author', str(young.pk), 0)]


def test_the_relay_waits_the_configured_outbox_relay_delay_by_default():
    with broker_down():
        author = Author.objects.create(name='Ann')

    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=600):
        assert outbox.relay() == 0
    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=0):
        assert outbox.relay() == 1

    assert [e.instance_pk for e in captured] == [author.pk]


def test_the_relay_publishes_in_batches_of_the_given_size_until_none_is_left():
    with broker_down():
        for name in 'abcde':
            Author.objects.create(name=name)
    left_when_sent = []

    def record(envelope):
        left_when_sent.append(OutboxEvent.objects.count())

    previous = set_sender(record)
    try:
        published = outbox.relay(batch=2, min_age=0)
    finally:
        set_sender(previous)

    # each batch is deleted when its transaction ends, before the next batch is taken
    assert published == 5
    assert left_when_sent == [5, 5, 3, 3, 1]
    assert events() == []


def test_the_relay_batch_defaults_to_outbox_relay_batch():
    with broker_down():
        for name in 'abc':
            Author.objects.create(name=name)
    left_when_sent = []

    def record(envelope):
        left_when_sent.append(OutboxEvent.objects.count())

    previous = set_sender(record)
    try:
        with cqrs_master_settings(outbox_relay_batch=2):
            assert outbox.relay(min_age=0) == 3
    finally:
        set_sender(previous)

    assert left_when_sent == [3, 3, 1]


def test_an_outbox_relay_batch_of_zero_is_refused_by_the_settings():
    with pytest.raises(ConfigurationError, match='outbox_relay_batch'), cqrs_master_settings(outbox_relay_batch=0):
        get_settings()


def test_an_empty_outbox_relays_nothing(captured):
    assert outbox.relay(min_age=0) == 0
    assert captured == []


# --- the broker-down pause -------------------------------------------------------------------


def test_after_a_failed_publish_later_events_are_left_to_the_relay_for_a_while():
    with broker_down() as attempts:
        first = Author.objects.create(name='first')
    assert outbox._broker_down_until > 0

    with capture_envelopes() as captured:
        second = Author.objects.create(name='second')
        assert captured == []
        assert [e[1] for e in events()] == [str(first.pk), str(second.pk)]

        assert outbox.relay(min_age=0) == 2

    assert len(attempts) == 1
    assert [e.instance_pk for e in captured] == [first.pk, second.pk]
    assert events() == []


def test_once_the_pause_is_over_the_committing_process_publishes_again(monkeypatch):
    with broker_down():
        Author.objects.create(name='first')
    monkeypatch.setattr(outbox, '_broker_down_until', outbox.time.monotonic() - 1)

    with capture_envelopes() as captured:
        second = Author.objects.create(name='second')

    assert [e.instance_pk for e in captured] == [second.pk]
    assert len(events()) == 1


# --- without the outbox ----------------------------------------------------------------------


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_nothing_is_written_to_it_and_the_commit_publishes(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')
        author.name = 'Ann B.'
        author.save()
        assert events() == []

    assert [(e.instance_pk, e.instance_data['name'], e.revision) for e in captured] == [(author.pk, 'Ann B.', 1)]
    assert events() == []


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_a_failed_publish_is_logged_and_never_raised(caplog):
    with caplog.at_level(logging.ERROR, logger='cqrs_celery'), broker_down() as attempts:
        author = Author.objects.create(name='Ann')
        author.name = 'Ann B.'
        author.save()

    assert len(attempts) == 2
    assert Author.objects.get(pk=author.pk).name == 'Ann B.'
    assert events() == []
    messages = [r.getMessage() for r in caplog.records if r.name == 'cqrs_celery.master.publish']
    assert messages == [f'cqrs publish failed: cqrs_id=author pk={author.pk} revision=0',
                        f'cqrs publish failed: cqrs_id=author pk={author.pk} revision=1']
    assert all(r.exc_info and r.exc_info[0] is PublishError for r in caplog.records
               if r.name == 'cqrs_celery.master.publish')


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_a_failed_publish_in_a_transaction_is_logged_and_never_raised(caplog):
    with caplog.at_level(logging.ERROR, logger='cqrs_celery'), broker_down(), transaction.atomic():
        author = Author.objects.create(name='Ann')
        item = Item.objects.create(sku='A', name='apple')

    assert Author.objects.filter(pk=author.pk).exists() and Item.objects.filter(pk=item.pk).exists()
    messages = sorted(r.getMessage() for r in caplog.records if r.name == 'cqrs_celery.master.publish')
    assert messages == sorted([f'cqrs publish failed: cqrs_id=author pk={author.pk} revision=0',
                               'cqrs publish failed: cqrs_id=item pk=A revision=0'])


# --- beat tasks ------------------------------------------------------------------------------


def test_the_relay_task_publishes_leftovers_on_the_master_database():
    with broker_down():
        authors = [Author.objects.create(name=name) for name in ('a', 'b')]

    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=0):
        published = beat.relay_outbox()

    assert published == 2
    assert [e.instance_pk for e in captured] == [a.pk for a in authors]
    assert events() == []


def test_the_relay_task_leaves_fresh_events_to_their_committing_process():
    with broker_down():
        Author.objects.create(name='Ann')

    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=600):
        assert beat.relay_outbox() == 0

    assert captured == []
    assert len(events()) == 1


def make_tombstones(model, ages):
    now = timezone.now()
    for n, age in enumerate(ages):
        model.objects.create(cqrs_id='item', pk_value=f'pk{n}', revision=1,
                             deleted_at=now - datetime.timedelta(seconds=age))


def test_clean_tombstones_removes_tombstones_older_than_each_sides_retention():
    hour, day = 3600, 24 * 3600
    make_tombstones(MasterTombstone, [2 * day, 2 * hour, 60])
    make_tombstones(ReplicaTombstone, [2 * day, 2 * hour, 60])

    with cqrs_retention(master=day, replica=hour):
        removed = beat.clean_tombstones()

    assert removed == 1 + 2
    assert sorted(MasterTombstone.objects.values_list('pk_value', flat=True)) == ['pk1', 'pk2']
    assert sorted(ReplicaTombstone.objects.values_list('pk_value', flat=True)) == ['pk2']


def test_clean_tombstones_with_the_default_retention_keeps_recent_tombstones():
    day = 24 * 3600
    make_tombstones(MasterTombstone, [91 * day, 31 * day])
    make_tombstones(ReplicaTombstone, [31 * day, 29 * day])

    assert beat.clean_tombstones() == 2
    assert list(MasterTombstone.objects.values_list('pk_value', flat=True)) == ['pk1']
    assert list(ReplicaTombstone.objects.values_list('pk_value', flat=True)) == ['pk1']


def test_the_beat_tasks_are_registered_under_their_names_on_the_projects_app():
    assert celery_app.tasks[beat.RELAY_TASK].name == 'cqrs_celery.relay_outbox'
    assert celery_app.tasks[beat.CLEANUP_TASK].name == 'cqrs_celery.clean_tombstones'


def test_the_beat_schedule_has_the_relay_and_the_cleanup_by_default():
    assert beat.beat_schedule() == {
        'cqrs-outbox-relay': {'task': 'cqrs_celery.relay_outbox', 'schedule': 2.0, 'options': {'expires': 10}},
        'cqrs-tombstone-cleanup': {'task': 'cqrs_celery.clean_tombstones', 'schedule': 3600.0,
                                   'options': {'expires': 3600.0}},
    }


def test_the_beat_schedule_sends_to_the_given_queue_and_expires_after_its_interval():
    schedule = beat.beat_schedule(relay_every=5, cleanup_every=600, queue='master_tasks')

    assert schedule['cqrs-outbox-relay']['schedule'] == 5
    assert schedule['cqrs-outbox-relay']['options'] == {'queue': 'master_tasks', 'expires': 25}
    assert schedule['cqrs-tombstone-cleanup']['schedule'] == 600
    assert schedule['cqrs-tombstone-cleanup']['options'] == {'queue': 'master_tasks', 'expires': 600}


@pytest.mark.parametrize(('kwargs', 'entries'), [
    ({'relay': False}, ['cqrs-tombstone-cleanup']),
    ({'cleanup': False}, ['cqrs-outbox-relay']),
    ({'relay': False, 'cleanup': False}, []),
])
def test_the_beat_schedule_can_leave_out_the_relay_or_the_cleanup(kwargs, entries):
    assert sorted(beat.beat_schedule(**kwargs)) == entries


def test_the_beat_schedule_entries_are_read_by_celery_beat():
    from celery.beat import ScheduleEntry

    entries = {name: ScheduleEntry(name=name, app=celery_app, **entry)
               for name, entry in beat.beat_schedule(queue='master_tasks').items()}

    relay, cleanup = entries['cqrs-outbox-relay'], entries['cqrs-tombstone-cleanup']
    assert (relay.task, relay.schedule.run_every, relay.options) == (
        beat.RELAY_TASK, datetime.timedelta(seconds=2), {'queue': 'master_tasks', 'expires': 10})
    assert (cleanup.task, cleanup.schedule.run_every, cleanup.options) == (
        beat.CLEANUP_TASK, datetime.timedelta(hours=1), {'queue': 'master_tasks', 'expires': 3600.0})


def test_the_outbox_command_shows_waiting_events_and_relays_them(captured):
    from io import StringIO

    from django.core.management import call_command

    with broker_down():
        Author.objects.create(name='Ann')
        Author.objects.create(name='Bob')
    out = StringIO()
    call_command('cqrs_outbox', 'status', stdout=out)
    assert out.getvalue().startswith('2 events waiting in the outbox of default (oldest from ')

    out = StringIO()
    call_command('cqrs_outbox', 'relay', stdout=out)
    assert '2 events published, 0 left' in out.getvalue()
    assert [e.instance_data['name'] for e in captured] == ['Ann', 'Bob']
    assert outbox.pending() == 0


def test_the_outbox_command_fails_when_events_cannot_be_published(captured):
    from django.core.management import CommandError, call_command

    with broker_down():
        Author.objects.create(name='Ann')
        with pytest.raises(CommandError, match='1 events could not be published'):
            call_command('cqrs_outbox', 'relay', stdout=StringIO())
