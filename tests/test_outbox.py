"""The transactional outbox and the beat tasks (DESIGN §6, §10): a small event naming the changed row
is written with the change; after commit the row's committed state is read and published, and the
event deleted; whatever is left (broker down, process gone) is published by the relay.

Tier i: publishes are captured (``capture_envelopes``) or refused by a failing sender; no broker.
Tier ii (marked in the section titles): a Celery app on kombu's ``memory://`` transport, for what
only a real producer shows (one message per batch, the publisher thread).
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
import time
import uuid

import pytest
import ujson
from celery import Celery
from django.conf import settings
from django.db import OperationalError, connection, connections, transaction
from django.db.utils import load_backend
from django.test import override_settings
from django.utils import timezone
from kombu import Queue

from cqrs_celery import ConfigurationError, PublishError, SignalType, beat, topology
from cqrs_celery.conf import get_settings
from cqrs_celery.exceptions import BrokerUnavailableError
from cqrs_celery.master import outbox, publisher
from cqrs_celery.models import MasterTombstone, OutboxEvent, ReplicaTombstone
from cqrs_celery.producer import set_sender
from cqrs_celery.testing import capture_envelopes
from tests.celery_app import app as celery_app
from tests.master_app.models import Author, Item, Shelf, ShelfBook

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    """Raised inside ``transaction.atomic()`` to roll it back."""


@contextlib.contextmanager
def cqrs_master_settings(**master):
    """``override_settings`` of the ``CQRS['master']`` section, keeping the rest of the current settings."""
    with override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS.get('master', {}), **master}}):
        yield


@pytest.fixture(autouse=True)
def quiet_publisher(monkeypatch):
    """Commits without a test sender leave their events to the relay (no publisher thread is woken),
    and no broker-down pause outlives its test."""
    monkeypatch.setattr(publisher, '_inline_paused_until', {})
    with cqrs_master_settings(publisher='relay'):
        yield


@pytest.fixture
def captured():
    with capture_envelopes() as envelopes:
        yield envelopes


@contextlib.contextmanager
def sending_with(sender):
    """Install ``sender`` instead of the broker inside the block."""
    previous = set_sender(sender)
    try:
        yield
    finally:
        set_sender(previous)


@contextlib.contextmanager
def broker_down():
    """Every publish inside the block fails as an unreachable broker would; yields the attempts."""
    attempts = []

    def unreachable(envelope):
        attempts.append(envelope)
        raise BrokerUnavailableError(f'broker down: {envelope.cqrs_id} pk={envelope.instance_pk!r}')

    with sending_with(unreachable):
        yield attempts


@contextlib.contextmanager
def refusing(*cqrs_ids):
    """Messages of ``cqrs_ids`` (all when none given) are refused, others sent; yields (sent, refused)."""
    sent, refused = [], []

    def send(envelope):
        if cqrs_ids and envelope.cqrs_id not in cqrs_ids:
            sent.append(envelope)
            return
        refused.append(envelope)
        raise PublishError(f'message refused: {envelope.cqrs_id} pk={envelope.instance_pk!r}')

    with sending_with(send):
        yield sent, refused


def cqrs_retention(master, replica):
    """Tombstone retention of both sides, in seconds."""
    return override_settings(CQRS={
        **settings.CQRS,
        'master': {**settings.CQRS.get('master', {}), 'tombstone_retention': master},
        'replica': {**settings.CQRS.get('replica', {}), 'tombstone_retention': replica},
    })


def events():
    """(cqrs_id, pk, signal_type) of every outbox event, oldest first."""
    return [(cqrs_id, ujson.loads(pk), signal_type) for cqrs_id, pk, signal_type
            in OutboxEvent.objects.order_by('id').values_list('cqrs_id', 'pk_value', 'signal_type')]


def event_ids():
    return list(OutboxEvent.objects.order_by('id').values_list('id', flat=True))


def failures():
    """(cqrs_id, pk, attempts, set_aside) of every outbox event, oldest first."""
    return [(cqrs_id, ujson.loads(pk), attempts, aside) for cqrs_id, pk, attempts, aside
            in OutboxEvent.objects.order_by('id').values_list('cqrs_id', 'pk_value', 'attempts', 'set_aside')]


def age_events(seconds):
    """Make every outbox event look ``seconds`` old."""
    OutboxEvent.objects.update(created=timezone.now() - datetime.timedelta(seconds=seconds))


def end_back_off():
    """Every backed-off event is ready again, as if its back-off were over."""
    OutboxEvent.objects.update(available_at=timezone.now())


def stored_revision(model, pk):
    return model.objects.values_list('cqrs_revision', flat=True).get(pk=pk)


def wait_until(predicate, timeout=10.0, what='the condition'):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'{what} did not happen within {timeout}s')
        time.sleep(0.02)


# --- written in the change's transaction -------------------------------------------------------


def test_a_save_writes_one_outbox_event_in_its_own_transaction(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')

        assert events() == [('author', author.pk, 'SAVE')]
        assert captured == []


def test_an_event_names_its_row_and_keeps_only_what_the_save_alone_knows(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')
        author.name = 'Bob'
        author.save()

        [event] = OutboxEvent.objects.all()
        assert (event.cqrs_id, ujson.loads(event.pk_value), event.signal_type) == ('author', author.pk, 'SAVE')
        assert ujson.loads(event.envelope) == {
            'previous_data': {'name': None},
            'meta': {'origin': 'tests', 'model': 'author', 'tenant': 'acme'},
            'correlation_id': None,
        }

    [published] = captured
    # created in this transaction: the name had no value before it
    assert (published.instance_data['name'], published.previous_data) == ('Bob', {'name': None})


def test_later_saves_in_the_transaction_keep_one_event_and_publish_the_final_state(captured):
    with transaction.atomic():
        author = Author.objects.create(name='first')
        first_ids = event_ids()
        author.name = 'second'
        author.save()
        author.name = 'final'
        author.save()

        assert event_ids() == first_ids

    [published] = captured
    assert (published.instance_data['name'], published.revision) == ('final', 0)
    assert stored_revision(Author, author.pk) == 0


def test_each_changed_instance_of_a_transaction_gets_its_own_event(captured):
    with transaction.atomic():
        first, second = Author.objects.create(name='first'), Author.objects.create(name='second')
        first.save()
        Item.objects.create(sku='A', name='apple')
        second.save()

        assert sorted(events()) == sorted([('author', first.pk, 'SAVE'), ('author', second.pk, 'SAVE'),
                                           ('item', 'A', 'SAVE')])


def test_a_delete_after_a_save_in_the_transaction_turns_the_event_into_the_delete(captured):
    with transaction.atomic():
        item = Item.objects.create(sku='A', name='apple')
        item.delete()

        [event] = OutboxEvent.objects.all()
        assert (event.signal_type, event.revision) == ('DELETE', 1)

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


def test_a_rolled_back_savepoint_publishes_the_state_before_it(captured):
    author = Author.objects.create(name='Ann')
    captured.clear()

    with transaction.atomic():
        author.name = 'kept'
        author.save()
        with contextlib.suppress(Rollback), transaction.atomic():
            author.name = 'undone'
            author.save()
            raise Rollback

        assert events() == [('author', author.pk, 'SAVE')]

    [published] = captured
    assert (published.instance_data['name'], published.revision) == ('kept', 1)
    assert events() == []


def test_an_event_written_only_in_a_rolled_back_savepoint_is_gone(captured):
    with transaction.atomic():
        kept = Author.objects.create(name='kept')
        with contextlib.suppress(Rollback), transaction.atomic():
            Author.objects.create(name='undone')
            raise Rollback

        assert events() == [('author', kept.pk, 'SAVE')]

    assert [e.instance_pk for e in captured] == [kept.pk]


@pytest.mark.parametrize('saved_before_the_savepoint', [True, False], ids=['after-another-row', 'first-in-transaction'])
def test_a_row_saved_in_a_rolled_back_savepoint_and_again_after_it_is_published(captured, saved_before_the_savepoint):
    author = Author.objects.create(name='Ann')
    captured.clear()

    with transaction.atomic():
        if saved_before_the_savepoint:
            Item.objects.create(sku='A', name='apple')
        with contextlib.suppress(Rollback), transaction.atomic():
            author.name = 'undone'
            author.save()
            raise Rollback
        author.name = 'kept'
        author.save()

    assert [(e.instance_pk, e.instance_data['name'], e.revision) for e in captured if e.cqrs_id == 'author'] == [
        (author.pk, 'kept', 1)]
    assert events() == []


def test_a_row_saved_in_a_released_savepoint_and_again_after_it_is_published_once(captured):
    with transaction.atomic():
        author = Author.objects.create(name='first')
        with transaction.atomic():
            author.name = 'second'
            author.save()
        author.name = 'final'
        author.save()

        assert events() == [('author', author.pk, 'SAVE')]

    assert [(e.instance_data['name'], e.revision) for e in captured] == [('final', 0)]


def test_a_row_saved_again_after_a_rolled_back_savepoint_does_not_take_over_another_rows_event(captured):
    """An event id seen inside a rolled-back savepoint may be given to another row's event later."""
    with transaction.atomic():
        author = Author.objects.create(name='first')
        with contextlib.suppress(Rollback), transaction.atomic():
            Item.objects.create(sku='A', name='created in the savepoint')
            raise Rollback
        Item.objects.create(sku='B', name='created after the savepoint')
        Item.objects.create(sku='A', name='created again')

        assert sorted(e[:2] for e in events()) == [('author', author.pk), ('item', 'A'), ('item', 'B')]

    assert sorted((e.cqrs_id, e.instance_pk, e.instance_data.get('name')) for e in captured) == [
        ('author', author.pk, 'first'), ('item', 'A', 'created again'), ('item', 'B', 'created after the savepoint')]


def test_bulk_create_writes_one_event_per_row(captured):
    with transaction.atomic():
        items = Item.cqrs.bulk_create([Item(sku=sku, name=f'item {sku}') for sku in 'ABC'])

        assert sorted(events()) == [('item', 'A', 'SAVE'), ('item', 'B', 'SAVE'), ('item', 'C', 'SAVE')]

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

        assert sorted(events()) == [('item', 'A', 'SAVE'), ('item', 'B', 'SAVE')]

    assert sorted((e.instance_pk, e.instance_data['name'], e.instance_data['quantity'], e.revision)
                  for e in captured) == [('A', 'new', 5, 2), ('B', 'new', 0, 1)]


def test_rows_bulk_updated_in_a_rolled_back_savepoint_and_again_after_it_are_published(captured):
    Item.cqrs.bulk_create([Item(sku=sku, name='old') for sku in 'AB'])
    captured.clear()

    with transaction.atomic():
        Author.objects.create(name='Ann')
        with contextlib.suppress(Rollback), transaction.atomic():
            Item.cqrs.bulk_update(Item.objects.all(), name='undone')
            raise Rollback
        Item.cqrs.bulk_update(Item.objects.all(), name='kept')

    assert sorted((e.instance_pk, e.instance_data['name'], e.revision) for e in captured if e.cqrs_id == 'item') == [
        ('A', 'kept', 1), ('B', 'kept', 1)]
    assert events() == []


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


# --- the published state is the committed state ----------------------------------------------


def test_a_row_changed_after_its_save_in_the_same_transaction_publishes_the_committed_state(captured):
    with transaction.atomic():
        author = Author.objects.create(name='saved')
        Author.objects.filter(pk=author.pk).update(name='changed after save()', email='ann@example.com')

    [published] = captured
    assert (published.instance_data['name'], published.instance_data['email']) == (
        'changed after save()', 'ann@example.com')


def test_a_serializer_sees_related_rows_written_after_save_in_the_same_transaction(captured):
    with transaction.atomic():
        shelf = Shelf.objects.create(name='classics')
        ShelfBook.objects.create(shelf=shelf, title='Dune')
        ShelfBook.objects.create(shelf=shelf, title='Emma')

    [published] = captured
    assert (published.cqrs_id, published.instance_data['name'], published.instance_data['books']) == (
        'shelf', 'classics', ['Dune', 'Emma'])


def test_rows_left_to_the_relay_are_published_as_they_are_when_it_runs():
    author = Author.objects.create(name='first')
    Author.objects.filter(pk=author.pk).update(name='changed without a save')

    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 1

    [published] = captured
    assert published.instance_data['name'] == 'changed without a save'


def test_meta_and_correlation_id_are_those_of_the_save_not_of_the_publish():
    current = {'correlation': 'at-save'}
    with cqrs_master_settings(correlation_function=lambda: current['correlation']):
        author = Author.objects.create(name='Ann')
        current['correlation'] = 'at-publish'
        with cqrs_master_settings(meta_function=lambda instance, **kwargs: {'when': 'publish'}), \
                capture_envelopes() as captured:
            assert outbox.relay(min_age=0) == 1

    [published] = captured
    assert (published.instance_pk, published.correlation_id) == (author.pk, 'at-save')
    assert published.meta == {'origin': 'tests', 'model': 'author', 'tenant': 'acme'}


def test_a_row_deleted_before_its_save_was_published_is_published_as_the_delete_alone():
    Item.objects.create(sku='A', name='apple')
    Item.objects.get(pk='A').delete()
    assert [e[2] for e in events()] == ['SAVE', 'DELETE']

    with capture_envelopes() as captured:
        outbox.relay(min_age=0)

    assert [(e.signal_type, e.instance_pk, e.revision) for e in captured] == [(SignalType.DELETE, 'A', 1)]
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


def test_with_the_relay_publisher_committed_events_wait_in_the_outbox_for_the_relay():
    with transaction.atomic():
        ann, bob = Author.objects.create(name='Ann'), Author.objects.create(name='Bob')

    assert events() == [('author', ann.pk, 'SAVE'), ('author', bob.pk, 'SAVE')]
    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 2
    assert [e.instance_pk for e in captured] == [ann.pk, bob.pk]
    assert events() == []


def test_events_taken_by_the_relay_before_the_committer_publishes_are_not_published_twice():
    author = Author.objects.create(name='Ann')
    ids = event_ids()

    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 1
        assert publisher.publish_inline('default', ids) == 0

    assert [e.instance_pk for e in captured] == [author.pk]
    assert events() == []


@pytest.mark.skipif(settings.DATABASE_KIND != 'postgres',
                    reason="SQLite's in-memory test database locks whole tables between threads")
def test_concurrent_relays_never_publish_an_event_twice():
    authors = [Author.objects.create(name=f'author {n}') for n in range(12)]
    both_publishing = threading.Barrier(2, timeout=10)
    waited = threading.local()
    published, totals, errors = [], [], []

    def send(envelope):
        if not getattr(waited, 'done', False):  # each relay holds its first event until both hold one
            waited.done = True
            both_publishing.wait()
        published.append(envelope.instance_pk)

    def relay():
        try:
            totals.append(outbox.relay(batch=1, min_age=0))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    with sending_with(send):
        relays = [threading.Thread(target=relay) for _ in range(2)]
        for thread in relays:
            thread.start()
        for thread in relays:
            thread.join(30)

    assert errors == []
    assert sorted(published) == sorted(a.pk for a in authors)
    assert sum(totals) == len(authors) and all(totals)
    assert events() == []


@pytest.fixture
def sqlite_file(tmp_path, django_db_blocker):
    """Two connections to one SQLite file in WAL mode, with Django's default (deferred) transactions."""
    aliases = ('outbox_sqlite_file', 'outbox_sqlite_file_other')
    database = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': str(tmp_path / 'master.sqlite3'),
                'OPTIONS': {'timeout': 0.2, 'init_command': 'PRAGMA journal_mode=WAL;'}}
    configured = connections.configure_settings({'default': {'ENGINE': database['ENGINE'], 'NAME': ':memory:'},
                                                 **{alias: dict(database) for alias in aliases}})
    wrappers = [load_backend(database['ENGINE']).DatabaseWrapper(configured[alias], alias) for alias in aliases]
    with django_db_blocker.unblock():
        for wrapper in wrappers:
            connections[wrapper.alias] = wrapper
        try:
            with wrappers[0].schema_editor() as editor:
                editor.create_model(OutboxEvent)
                editor.create_model(Author)
            yield aliases
        finally:
            for wrapper in wrappers:
                wrapper.close()
                del connections[wrapper.alias]


def test_a_save_while_a_sqlite_drain_publishes_goes_through_and_nothing_is_published_twice(sqlite_file):
    """SQLite has one writer: a drain that held the write lock while it published made every save
    of the service wait for the broker. Only its delete takes the lock now; a save committed while
    it published neither waits for it nor makes it publish anything again."""
    alias, other = sqlite_file
    authors = [Author.objects.using(alias).create(name=f'author {n}') for n in range(3)]
    published, refused = [], []

    def send(envelope):
        if not published:  # another connection of the service writes while the drain publishes
            try:
                with connections[other].cursor() as cursor:
                    cursor.execute(f'UPDATE {Author._meta.db_table} SET email = %s', ['meanwhile@example.com'])
            except OperationalError as exc:
                refused.append(exc)
        published.append(envelope.instance_pk)

    with sending_with(send):
        first = outbox.drain(alias)
        second = outbox.drain(alias)

    assert refused == [], 'the write waited for the drain and gave up (its timeout here is 0.2 s)'
    assert (first.published, first.failed, second.taken) == (3, 0, 0)
    assert sorted(published) == sorted(author.pk for author in authors)
    assert OutboxEvent.objects.using(alias).count() == 0
    assert set(Author.objects.using(alias).values_list('email', flat=True)) == {'meanwhile@example.com'}


def test_sqlite_drains_of_one_file_exclude_one_another_across_processes(sqlite_file):
    """Without row locks, two drains could take the same events: a drain holds an exclusive lock
    on a file beside the database from its first read to its delete (a ``flock``, which another
    process's open of the file conflicts with, as another open in this process does)."""
    alias, _ = sqlite_file
    Author.objects.using(alias).create(name='author')
    lock_file = f'{connections[alias].settings_dict["NAME"]}-cqrs-drain.lock'
    while_publishing = []

    def try_lock() -> bool:
        with open(lock_file, 'ab') as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True

    def send(envelope):
        attempt = threading.Thread(target=lambda: while_publishing.append(try_lock()))
        attempt.start()
        attempt.join(10)

    with sending_with(send):
        assert outbox.drain(alias).published == 1

    assert while_publishing == [False], 'another drain could take the events while this one published'
    assert try_lock(), 'the lock is let go once the drain is over'


def test_a_sqlite_drain_that_cannot_open_its_lock_file_still_publishes_and_says_so(sqlite_file, caplog):
    alias, _ = sqlite_file
    Author.objects.using(alias).create(name='author')
    os.mkdir(f'{connections[alias].settings_dict["NAME"]}-cqrs-drain.lock')  # not a file one can open
    published = []

    with sending_with(lambda envelope: published.append(envelope.instance_pk)):
        result = outbox.drain(alias)

    assert result.published == 1 and len(published) == 1
    assert OutboxEvent.objects.using(alias).count() == 0
    assert 'cannot open the drain lock' in caplog.text


# --- one message per batch (tier ii: memory:// broker) ---------------------------------------


@pytest.fixture
def memory_broker():
    """A Celery app on ``memory://`` as the project's app, with a queue bound to the author and item
    exchanges; yields a function taking the message bodies off that queue."""
    app = Celery('outbox_memory', broker='memory://', set_as_current=False)
    name = f'outbox_{uuid.uuid4().hex[:12]}'
    with override_settings(CQRS={**settings.CQRS, 'app': app}), app.connection_for_write() as conn:
        channel = conn.default_channel
        topology.replica_queue(name, ['author', 'item'], topology.VIRTUAL)(channel).declare()

        def take():
            queue, bodies = Queue(name)(channel), []
            while (message := queue.get(no_ack=True, accept=['json'])) is not None:
                bodies.append(message.decode()[0][0])  # (args, kwargs, embed): the one argument
            return bodies

        try:
            yield take
        finally:
            for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key)
            channel.queue_delete(name)
    app.close()


@pytest.mark.parametrize(('batch_size', 'messages'), [
    (100, [('author', 3), ('item', 1)]),
    (2, [('author', 2), ('author', 1), ('item', 1)]),
])
def test_rows_saved_in_one_transaction_go_out_as_one_message_per_model_and_batch_size(memory_broker, batch_size,
                                                                                       messages):
    with cqrs_master_settings(publisher='inline', publish_batch_size=batch_size), transaction.atomic():
        authors = [Author.objects.create(name=name) for name in ('a', 'b', 'c')]
        Item.objects.create(sku='A', name='apple')

    bodies = memory_broker()
    assert [(body['cqrs_id'], len(body['rows'])) for body in bodies] == messages
    assert {body['v'] for body in bodies} == {2}
    assert [row['instance_pk'] for body in bodies if body['cqrs_id'] == 'author' for row in body['rows']] == [
        a.pk for a in authors]
    assert events() == []


def max_message_size(limit):
    """``override_settings`` of the replica queues' size limit, keeping the rest of the current settings."""
    return override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS.get('replica', {}),
                                                                'max_message_size': limit}})


def test_a_batch_larger_than_replica_queues_accept_goes_out_in_messages_they_accept(memory_broker):
    with max_message_size(2048), cqrs_master_settings(publisher='inline', publish_batch_size=100), \
            transaction.atomic():
        authors = [Author.objects.create(name=f'{i:03d}' + 'x' * 90) for i in range(20)]

    bodies = memory_broker()
    assert len(bodies) > 1
    assert all(len(json.dumps([[body], {}, {}])) <= 2048 for body in bodies)
    assert [row['instance_pk'] for body in bodies for row in body['rows']] == [a.pk for a in authors]
    assert events() == []


def test_a_row_larger_than_replica_queues_accept_is_kept_in_the_outbox_with_the_reason(memory_broker):
    with max_message_size(1024), cqrs_master_settings(publisher='inline'):
        Author.objects.create(name='é' * 100, email=f'{"z" * 240}@example.com')  # é: 6 bytes as JSON

    assert memory_broker() == []
    [event] = OutboxEvent.objects.all()
    assert 'max_message_size' in event.error


def test_the_publisher_thread_publishes_what_a_commit_leaves_without_holding_up_the_save(memory_broker):
    bodies = []
    try:
        with cqrs_master_settings(publisher='thread'):
            with transaction.atomic():
                author = Author.objects.create(name='Ann')
                Author.objects.create(name='Bob')

            wait_until(lambda: bodies.extend(memory_broker()) or sum(len(b['rows']) for b in bodies) == 2,
                       what='publishing both rows')
            assert publisher.wait_idle(10)
    finally:
        publisher.shutdown(5)

    assert bodies[0]['rows'][0]['instance_pk'] == author.pk
    assert events() == []


# --- a failed publish: isolated per model, backed off, set aside -----------------------------


def test_a_refused_message_keeps_its_events_and_the_save_succeeds():
    with refusing() as (_, refused):
        author = Author.objects.create(name='Ann')

    assert [e.instance_pk for e in refused] == [author.pk]
    assert Author.objects.filter(pk=author.pk, name='Ann').exists()
    assert failures() == [('author', author.pk, 1, False)]
    event = OutboxEvent.objects.get()
    assert event.error == f'PublishError: message refused: author pk={author.pk}'
    assert event.available_at > timezone.now()


def test_a_refused_message_is_logged_with_cqrs_id_pk_and_the_attempt(caplog):
    with caplog.at_level(logging.WARNING, logger='cqrs_celery'), refusing():
        author = Author.objects.create(name='Ann')

    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.master.outbox']
    assert record.levelno == logging.WARNING
    assert f'cqrs_id=author pk={author.pk}' in record.getMessage()
    assert f'attempt 1/{get_settings().master.outbox_max_attempts}' in record.getMessage()
    assert 'message refused' in record.getMessage()


def test_one_models_refused_messages_do_not_hold_back_another_models():
    with refusing('item') as (sent, refused), transaction.atomic():
        author = Author.objects.create(name='Ann')
        Item.objects.create(sku='A', name='apple')

    assert ([e.instance_pk for e in sent], [e.instance_pk for e in refused]) == ([author.pk], ['A'])
    assert failures() == [('item', 'A', 1, False)]

    end_back_off()
    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 1
    assert [(e.cqrs_id, e.instance_pk) for e in captured] == [('item', 'A')]


def test_an_event_whose_model_is_gone_fails_alone():
    OutboxEvent.objects.create(cqrs_id='removed_model', pk_value='1')
    author = Author.objects.create(name='Ann')

    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 1

    assert [(e.cqrs_id, e.instance_pk) for e in captured] == [('author', author.pk)]
    assert failures() == [('removed_model', 1, 1, False)]
    assert 'removed_model' in OutboxEvent.objects.get().error


def test_a_refused_event_is_not_taken_again_before_its_back_off_which_grows_with_each_failure():
    with refusing() as (_, refused):
        Author.objects.create(name='Ann')
        first_wait = OutboxEvent.objects.get().available_at - timezone.now()

        assert outbox.relay(min_age=0) == 0
        assert len(refused) == 1  # backed off: not tried again yet

        end_back_off()
        outbox.relay(min_age=0)
        second_wait = OutboxEvent.objects.get().available_at - timezone.now()

    assert len(refused) == 2
    assert OutboxEvent.objects.get().attempts == 2
    assert second_wait > first_wait > datetime.timedelta(0)


def test_an_event_refused_outbox_max_attempts_times_is_set_aside_and_counted_by_status(caplog):
    with cqrs_master_settings(outbox_max_attempts=2), refusing('item') as (_, refused), \
            caplog.at_level(logging.ERROR, logger='cqrs_celery.master.outbox'):
        Item.objects.create(sku='A', name='apple')
        end_back_off()
        outbox.relay(min_age=0)
        assert failures() == [('item', 'A', 2, True)]

        end_back_off()
        assert outbox.relay(min_age=0) == 0  # set aside: no longer taken

    assert len(refused) == 2
    assert any('set aside' in r.getMessage() and 'cqrs_id=item' in r.getMessage() for r in caplog.records)
    status = outbox.status()
    assert [(r['cqrs_id'], r['set_aside'], r['count']) for r in status['rows']] == [('item', True, 1)]
    assert status['errors'] == [('item', '"A"', "PublishError: message refused: item pk='A'")]
    assert outbox.pending() == 1


def test_retry_set_aside_puts_set_aside_events_back_and_the_relay_publishes_them():
    with cqrs_master_settings(outbox_max_attempts=1), refusing():
        Item.objects.create(sku='A', name='apple')
    assert failures() == [('item', 'A', 1, True)]

    assert outbox.retry_set_aside() == 1
    assert failures() == [('item', 'A', 0, False)]
    with capture_envelopes() as captured:
        assert outbox.relay(min_age=0) == 1

    assert [e.instance_pk for e in captured] == ['A']
    assert outbox.status() == {'rows': [], 'errors': []}


def test_events_set_aside_ahead_of_ready_ones_do_not_hold_them_back_and_the_rest_go_in_order():
    with cqrs_master_settings(outbox_max_attempts=1), refusing():
        for sku in 'ABC':
            Item.objects.create(sku=sku, name='old')
    for sku in 'DEF':
        Item.objects.create(sku=sku, name='new')
    assert [(pk, aside) for _, pk, _, aside in failures()] == [
        ('A', True), ('B', True), ('C', True), ('D', False), ('E', False), ('F', False)]

    with capture_envelopes() as captured:
        assert outbox.relay(batch=2, min_age=0) == 3

    assert [e.instance_pk for e in captured] == ['D', 'E', 'F']
    assert [pk for _, pk, _, _ in failures()] == ['A', 'B', 'C']


@pytest.mark.skipif(connection.vendor != 'sqlite', reason="SQLite's plans are fixed by its rules; PostgreSQL's by "
                    'its statistics')
def test_the_publisher_reads_ready_events_from_the_pending_index_in_id_order_without_sorting_them():
    """A drain must cost its batch, not the backlog: SQLite sorted every ready event at each drain
    when the query matched an index on (set_aside, available_at) instead of one in ``id`` order."""
    sql = outbox._ready_sql(connection)
    with connection.cursor() as cursor:
        cursor.execute(f'EXPLAIN QUERY PLAN {sql}', [timezone.now().isoformat(' '), 500])
        plan = ' | '.join(str(row[-1]) for row in cursor.fetchall())

    assert 'cqrs_outbox_pending' in plan, plan
    assert 'TEMP B-TREE' not in plan, plan


# --- a broker outage -------------------------------------------------------------------------


def test_a_broker_outage_counts_no_attempt_and_leaves_the_event_ready():
    with broker_down() as attempts:
        author = Author.objects.create(name='Ann')
        drained = outbox.drain(ids=event_ids())

    assert [e.instance_pk for e in attempts] == [author.pk, author.pk]
    assert (drained.published, drained.failed, drained.taken) == (0, 0, 1)
    assert isinstance(drained.broker_down, BrokerUnavailableError)
    event = OutboxEvent.objects.get()
    assert (event.attempts, event.error, event.set_aside) == (0, '', False)
    assert event.available_at <= timezone.now()


def test_after_a_broker_outage_later_commits_leave_their_events_to_the_relay_for_a_while():
    with broker_down() as attempts:
        first = Author.objects.create(name='first')
    assert max(publisher._inline_paused_until.values()) > time.monotonic()

    with capture_envelopes() as captured:
        second = Author.objects.create(name='second')
        assert captured == []
        assert [e[1] for e in events()] == [first.pk, second.pk]

        assert outbox.relay(min_age=0) == 2

    assert len(attempts) == 1
    assert [e.instance_pk for e in captured] == [first.pk, second.pk]
    assert events() == []


def test_once_the_pause_is_over_the_committing_process_publishes_again():
    with broker_down():
        Author.objects.create(name='first')
    for broker in publisher._inline_paused_until:
        publisher._inline_paused_until[broker] = time.monotonic() - 1

    with capture_envelopes() as captured:
        second = Author.objects.create(name='second')

    assert [e.instance_pk for e in captured] == [second.pk]
    assert len(events()) == 1


def test_a_refused_message_does_not_pause_publishing_after_commit():
    with refusing():
        Author.objects.create(name='refused')

    with capture_envelopes() as captured:
        second = Author.objects.create(name='second')

    assert [e.instance_pk for e in captured] == [second.pk]
    assert publisher._inline_paused_until == {}


def test_a_relay_stops_when_the_broker_goes_away_and_keeps_the_rest_without_counting_attempts(caplog):
    with broker_down():
        authors = [Author.objects.create(name=name) for name in ('a', 'b', 'c')]
    sent = []

    def up_then_down(envelope):
        if sent:
            raise BrokerUnavailableError('broker went away')
        sent.append(envelope)

    with cqrs_master_settings(publish_batch_size=1), sending_with(up_then_down), \
            caplog.at_level(logging.ERROR, logger='cqrs_celery.master.outbox'):
        published = outbox.relay(min_age=0)

    assert published == 1
    assert [e.instance_pk for e in sent] == [authors[0].pk]
    assert failures() == [('author', authors[1].pk, 0, False), ('author', authors[2].pk, 0, False)]
    assert any('relay stopped after 1 events' in r.getMessage() for r in caplog.records)


# --- the relay -------------------------------------------------------------------------------


def test_the_relay_publishes_each_rows_committed_state_once_oldest_first_per_model_and_deletes_the_events():
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
        ('author', authors[0].pk, 1), ('author', authors[1].pk, 0), ('author', authors[2].pk, 0), ('item', 'A', 0)]
    # the create's event and the rename's collapse: the name had no value before the first of them
    assert (captured[0].instance_data['name'], captured[0].previous_data) == ('a, renamed', {'name': None})
    assert events() == []


def test_the_relay_leaves_events_younger_than_min_age():
    old = Author.objects.create(name='old')
    age_events(120)
    young = Author.objects.create(name='young')

    with capture_envelopes() as captured:
        published = outbox.relay(min_age=60)

    assert published == 1
    assert [e.instance_pk for e in captured] == [old.pk]
    assert events() == [('author', young.pk, 'SAVE')]


def test_the_relay_waits_the_configured_outbox_relay_delay_by_default():
    author = Author.objects.create(name='Ann')

    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=600):
        assert outbox.relay() == 0
    with capture_envelopes() as captured, cqrs_master_settings(outbox_relay_delay=0):
        assert outbox.relay() == 1

    assert [e.instance_pk for e in captured] == [author.pk]


def test_the_relay_publishes_in_batches_of_the_given_size_until_none_is_left():
    for name in 'abcde':
        Author.objects.create(name=name)
    left_when_sent = []

    with sending_with(lambda envelope: left_when_sent.append(OutboxEvent.objects.count())):
        published = outbox.relay(batch=2, min_age=0)

    # each batch is deleted when its transaction ends, before the next batch is taken
    assert published == 5
    assert left_when_sent == [5, 5, 3, 3, 1]
    assert events() == []


def test_the_relay_batch_defaults_to_outbox_relay_batch():
    for name in 'abc':
        Author.objects.create(name=name)
    left_when_sent = []

    with sending_with(lambda envelope: left_when_sent.append(OutboxEvent.objects.count())), \
            cqrs_master_settings(outbox_relay_batch=2):
        assert outbox.relay(min_age=0) == 3

    assert left_when_sent == [3, 3, 1]


def test_an_outbox_relay_batch_of_zero_is_refused_by_the_settings():
    with pytest.raises(ConfigurationError, match='outbox_relay_batch'), cqrs_master_settings(outbox_relay_batch=0):
        get_settings()


def test_an_empty_outbox_relays_nothing(captured):
    assert outbox.relay(min_age=0) == 0
    assert captured == []


# --- without the outbox ----------------------------------------------------------------------


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_nothing_is_written_to_it_and_the_commit_publishes(captured):
    with transaction.atomic():
        author = Author.objects.create(name='Ann')
        author.name = 'Ann B.'
        author.save()
        assert events() == []

    assert [(e.instance_pk, e.instance_data['name'], e.revision) for e in captured] == [(author.pk, 'Ann B.', 0)]
    assert events() == []


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_a_failed_publish_is_logged_and_never_raised(caplog):
    with caplog.at_level(logging.ERROR, logger='cqrs_celery'), refusing() as (_, refused):
        author = Author.objects.create(name='Ann')
        author.name = 'Ann B.'
        author.save()

    assert len(refused) == 2
    assert Author.objects.get(pk=author.pk).name == 'Ann B.'
    assert events() == []
    records = [r for r in caplog.records if r.name == 'cqrs_celery.master.publish']
    assert len(records) == 2
    assert all(f'author:{author.pk}' in r.getMessage() and 'not sent' in r.getMessage() for r in records)
    assert all(r.exc_info and r.exc_info[0] is PublishError for r in records)


@cqrs_master_settings(outbox=False)
def test_without_the_outbox_a_failed_publish_in_a_transaction_is_logged_and_never_raised(caplog):
    with caplog.at_level(logging.ERROR, logger='cqrs_celery'), refusing(), transaction.atomic():
        author = Author.objects.create(name='Ann')
        item = Item.objects.create(sku='A', name='apple')

    assert Author.objects.filter(pk=author.pk).exists() and Item.objects.filter(pk=item.pk).exists()
    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.master.publish']
    assert f'author:{author.pk}' in record.getMessage() and "item:'A'" in record.getMessage()


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


def test_a_drain_that_took_an_event_whose_row_changed_again_takes_the_newer_event_with_it():
    with cqrs_master_settings(publisher='relay'):
        author = Author.objects.create(name='first')
        first = OutboxEvent.objects.get()
        author.name = 'second'
        author.save()

    assert OutboxEvent.objects.count() == 2
    with capture_envelopes() as sent:
        both = outbox.drain('default', ids=[first.pk])  # as a drain that took only the older event

    assert both.published == 2
    [envelope] = sent
    assert (envelope.instance_data['name'], envelope.revision) == ('second', 1)
    assert envelope.previous_data == {'name': None}  # the earliest: before the row was created
    assert not OutboxEvent.objects.exists()


def test_an_event_whose_newer_event_was_already_published_is_not_published_again():
    with cqrs_master_settings(publisher='relay'):
        author = Author.objects.create(name='first')
        first = OutboxEvent.objects.get()
        author.name = 'second'
        author.save()
    second = OutboxEvent.objects.exclude(pk=first.pk).get()

    with capture_envelopes() as sent:
        outbox.drain('default', ids=[second.pk])
        later = outbox.drain('default', ids=[first.pk])

    assert [(e.instance_data['name'], e.previous_data) for e in sent] == [('second', {'name': 'first'})]
    assert later.published == 1  # done, but nothing sent
    assert not OutboxEvent.objects.exists()
