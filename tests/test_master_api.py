"""The master model API (DESIGN §2, §6): revisions, publishing on commit, options and bulk operations.

Tier i: publishes are captured (``cqrs_captured``) or applied in-process (``loopback``); no broker.
"""

import contextlib
import decimal
import functools

import pytest
import ujson
from django.conf import settings
from django.db import connections, transaction
from django.db.models.signals import post_save
from django.test import override_settings

from cqrs_celery import DataError, SignalType
from cqrs_celery.envelope import decode
from cqrs_celery.exceptions import MetaError
from cqrs_celery.models import MasterTombstone
from cqrs_celery.replica.apply import Outcome, apply
from cqrs_celery.serialization import ENVELOPE_LEVELS
from cqrs_celery.signals import post_bulk_create, post_update
from tests.master_app.models import AllFields, Author, Book, Item, ManualNote, Publisher, SerializedBook, Truck, Vehicle
from tests.replica_app.models import (
    NoteEvent,
    ReplicaAllFields,
    ReplicaAuthor,
    ReplicaBook,
    ReplicaItem,
    ReplicaPublisher,
    ReplicaSerializedBook,
)

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    """Raised inside ``transaction.atomic()`` to roll it back."""


def cqrs_master_settings(**master):
    """``override_settings`` of the ``CQRS['master']`` section, keeping the rest of the test settings."""
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS.get('master', {}), **master}})


@contextlib.contextmanager
def received(signal, sender):
    """Collect the keyword arguments of every ``signal`` sent by ``sender`` inside the block."""
    calls = []

    def receiver(**kwargs):
        calls.append(kwargs)

    signal.connect(receiver, sender=sender, weak=False)
    try:
        yield calls
    finally:
        signal.disconnect(receiver, sender=sender)


def of(captured, model):
    """The captured envelopes of ``model``'s CQRS_ID, in publish order."""
    return [e for e in captured if e.cqrs_id == model.CQRS_ID]


def stored_revision(model, pk):
    return model.objects.values_list('cqrs_revision', flat=True).get(pk=pk)


def assert_item_replicated(sku):
    master, replica = Item.objects.get(pk=sku), ReplicaItem.objects.get(pk=sku)
    assert (replica.name, replica.quantity, replica.cqrs_revision, replica.cqrs_updated) == (
        master.name, master.quantity, master.cqrs_revision, master.cqrs_updated)


def make_author(name='Ann'):
    return Author.objects.create(name=name, email='ann@example.com')


def make_book(author, title='Dune', price='9.99'):
    return Book.objects.create(title=title, price=decimal.Decimal(price), author=author)


# --- revisions ---------------------------------------------------------------------------------


def test_a_new_row_starts_at_revision_zero_on_master_and_replica(loopback):
    author = make_author()

    assert stored_revision(Author, author.pk) == 0
    assert ReplicaAuthor.objects.get(pk=author.pk).cqrs_revision == 0


def test_each_committed_save_adds_one_to_the_revision(loopback):
    author = make_author()
    for expected in (1, 2, 3):
        author.name = f'Ann {expected}'
        author.save()

        assert author.cqrs_revision == expected
        assert stored_revision(Author, author.pk) == expected
        replica = ReplicaAuthor.objects.get(pk=author.pk)
        assert (replica.name, replica.cqrs_revision) == (f'Ann {expected}', expected)


def test_a_save_from_a_stale_instance_still_continues_from_the_stored_revision(loopback):
    author = make_author()
    stale_copy = Author.objects.get(pk=author.pk)
    author.save()
    author.save()

    stale_copy.name = 'from the stale copy'
    stale_copy.save()

    assert stored_revision(Author, author.pk) == 3
    assert ReplicaAuthor.objects.get(pk=author.pk).name == 'from the stale copy'


def test_a_rolled_back_save_does_not_consume_a_revision(cqrs_captured):
    author = make_author()

    with contextlib.suppress(Rollback), transaction.atomic():
        author.save()
        raise Rollback

    assert stored_revision(Author, author.pk) == 0
    Author.objects.get(pk=author.pk).save()
    assert stored_revision(Author, author.pk) == 1


def test_deleting_a_row_publishes_a_delete_one_revision_above_the_last_save(cqrs_captured):
    item = Item.objects.create(sku='A', name='apple')
    item.save()

    item.delete()

    delete = of(cqrs_captured, Item)[-1]
    assert delete.signal_type == SignalType.DELETE
    assert delete.instance_pk == 'A'
    assert delete.revision == 2


def test_a_delete_of_a_stale_instance_takes_the_revision_of_the_row_and_few_statements(cqrs_captured):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    item = Item.objects.create(sku='A', name='apple')
    stale = Item.objects.get(pk='A')
    item.save()
    item.save()  # revision 2 in the database; the stale instance still has 0

    with CaptureQueriesContext(connection) as queries:
        stale.delete()

    assert MasterTombstone.objects.get(cqrs_id='item', pk_value='A').revision == 3
    assert of(cqrs_captured, Item)[-1].revision == 3
    sql = [query['sql'] for query in queries.captured_queries]
    statements = [text.split()[0] for text in sql[:sql.index('COMMIT')] if text != 'BEGIN']
    if connection.vendor == 'postgresql':  # lock, read and tombstone in one statement; the row; the event
        assert statements == ['WITH', 'DELETE', 'INSERT']
    else:
        assert statements == ['SELECT', 'DELETE', 'INSERT', 'INSERT']


def test_a_deleted_row_disappears_from_the_replica(loopback):
    item = Item.objects.create(sku='A', name='apple')

    item.delete()

    assert not ReplicaItem.objects.filter(pk='A').exists()


def test_a_queryset_delete_publishes_a_delete_for_every_row(loopback):
    for sku in 'ABC':
        Item.objects.create(sku=sku, name=sku)

    Item.objects.filter(sku__in=['A', 'B']).delete()

    assert list(ReplicaItem.objects.values_list('sku', flat=True)) == ['C']


def test_a_cascade_delete_removes_the_dependent_rows_from_the_replica(loopback):
    author = make_author()
    make_book(author, 'one')
    make_book(author, 'two')
    assert ReplicaBook.objects.count() == 2

    author.delete()

    assert not ReplicaAuthor.objects.exists()
    assert not ReplicaBook.objects.exists()


def test_a_row_re_created_under_a_deleted_pk_continues_above_the_deleted_revision(loopback):
    item = Item.objects.create(sku='A', name='first life')
    item.save()
    item.delete()
    assert MasterTombstone.objects.get(cqrs_id='item', pk_value='A').revision == 2

    again = Item.objects.create(sku='A', name='second life')

    assert again.cqrs_revision == 3
    assert stored_revision(Item, 'A') == 3
    assert_item_replicated('A')
    assert ReplicaItem.objects.get(pk='A').name == 'second life'


def test_a_row_deleted_and_re_created_in_one_transaction_is_published_once_with_its_new_state(cqrs_captured):
    Item.objects.create(sku='A', name='first life').save()

    with transaction.atomic():
        Item.objects.get(pk='A').delete()
        Item.objects.create(sku='A', name='second life')

    [*_, last] = of(cqrs_captured, Item)
    assert len(of(cqrs_captured, Item)) == 3
    assert (last.signal_type, last.revision, last.instance_data['name']) == (SignalType.SAVE, 3, 'second life')


# --- publishing on commit ----------------------------------------------------------------------


def test_nothing_is_published_before_the_transaction_commits(cqrs_captured):
    with transaction.atomic():
        make_author()
        assert cqrs_captured == []

    assert len(cqrs_captured) == 1


def test_several_saves_in_one_transaction_publish_one_message_with_the_committed_state(cqrs_captured):
    with transaction.atomic():
        author = make_author('first')
        author.name = 'second'
        author.save()
        author.name = 'final'
        author.save()

    [envelope] = cqrs_captured
    assert envelope.signal_type == SignalType.SAVE
    assert envelope.instance_data['name'] == 'final'
    # one change per instance and transaction (django-cqrs counts so): a row created here stays at 0
    assert envelope.revision == 0 == stored_revision(Author, author.pk)


def test_the_committed_state_reaches_the_replica_once(loopback):
    with transaction.atomic():
        author = make_author('first')
        author.name = 'final'
        author.save()

    assert [r.outcome for r in loopback] == [Outcome.CREATED]
    replica = ReplicaAuthor.objects.get(pk=author.pk)
    assert (replica.name, replica.cqrs_revision) == ('final', 0)


def test_each_changed_row_of_a_transaction_gets_its_own_message(cqrs_captured):
    with transaction.atomic():
        first, second = make_author('first'), make_author('second')
        first.save()
        second.save()

    assert sorted(e.instance_pk for e in cqrs_captured) == sorted([first.pk, second.pk])


def test_a_rolled_back_transaction_publishes_nothing(cqrs_captured):
    author = make_author()
    cqrs_captured.clear()

    with contextlib.suppress(Rollback), transaction.atomic():
        author.name = 'never committed'
        author.save()
        make_author('never created')
        Item.objects.create(sku='A', name='never created')
        raise Rollback

    assert cqrs_captured == []


def test_a_rolled_back_delete_publishes_nothing(loopback):
    item = Item.objects.create(sku='A', name='apple')
    loopback.clear()

    with contextlib.suppress(Rollback), transaction.atomic():
        item.delete()
        raise Rollback

    assert loopback == []
    assert_item_replicated('A')


def test_a_change_in_a_rolled_back_savepoint_is_not_published(cqrs_captured):
    kept = make_author('kept')
    cqrs_captured.clear()

    with transaction.atomic():
        kept.name = 'kept, renamed'
        kept.save()
        with contextlib.suppress(Rollback), transaction.atomic():
            undone = make_author('undone')
            kept.name = 'renamed in the savepoint'
            kept.save()
            raise Rollback

    [envelope] = cqrs_captured
    assert envelope.instance_pk == kept.pk
    assert envelope.instance_data['name'] == 'kept, renamed'
    assert envelope.revision == 1 == stored_revision(Author, kept.pk)
    assert not Author.objects.filter(pk=undone.pk).exists()


def test_a_row_changed_only_in_a_rolled_back_savepoint_is_not_published(cqrs_captured):
    untouched = make_author('untouched')
    cqrs_captured.clear()

    with transaction.atomic():
        other = make_author('other')
        with contextlib.suppress(Rollback), transaction.atomic():
            untouched.name = 'renamed in the savepoint'
            untouched.save()
            raise Rollback

    assert [e.instance_pk for e in cqrs_captured] == [other.pk]


def test_a_rolled_back_savepoint_that_held_the_first_change_does_not_stop_later_ones(cqrs_captured):
    with transaction.atomic():
        with contextlib.suppress(Rollback), transaction.atomic():
            make_author('undone')
            raise Rollback
        kept = make_author('kept')

    assert [e.instance_pk for e in cqrs_captured] == [kept.pk]


def test_a_delete_in_a_rolled_back_savepoint_is_not_published(cqrs_captured):
    item = Item.objects.create(sku='A', name='apple')
    cqrs_captured.clear()

    with transaction.atomic():
        item.name = 'pear'
        item.save()
        with contextlib.suppress(Rollback), transaction.atomic():
            Item.objects.get(pk='A').delete()
            raise Rollback

    [envelope] = cqrs_captured
    assert (envelope.signal_type, envelope.instance_data['name'], envelope.revision) == (SignalType.SAVE, 'pear', 1)


# --- tracked fields ----------------------------------------------------------------------------


def test_a_created_row_sends_its_tracked_fields_with_none_as_previous_values(cqrs_captured):
    make_author()

    assert cqrs_captured[0].previous_data == {'name': None}


def test_changing_a_tracked_field_sends_its_previous_value(loopback):
    author = make_author('old name')

    author.name = 'new name'
    author.save()

    assert ReplicaAuthor.objects.get(pk=author.pk).last_previous == {'name': 'old name'}


def test_changing_only_untracked_fields_sends_no_previous_data(cqrs_captured):
    author = make_author()
    cqrs_captured.clear()

    author.email = 'other@example.com'
    author.save()

    assert cqrs_captured[0].previous_data is None


def test_previous_data_keeps_the_earliest_value_of_each_field_in_the_transaction(cqrs_captured):
    book = make_book(make_author(), title='first', price='1.00')
    cqrs_captured.clear()

    with transaction.atomic():
        book.title = 'second'
        book.save()
        book.title = 'third'
        book.price = decimal.Decimal('2.50')
        book.save()

    [envelope] = of(cqrs_captured, Book)
    assert envelope.previous_data.keys() == {'title', 'price'}
    assert envelope.previous_data['title'] == 'first'
    assert decimal.Decimal(envelope.previous_data['price']) == decimal.Decimal('1.00')
    assert envelope.instance_data['title'] == 'third'


def test_previous_data_of_a_decimal_is_json_safe(cqrs_captured):
    book = make_book(make_author(), price='1.25')
    cqrs_captured.clear()

    book.price = decimal.Decimal('3.75')
    book.save()

    [envelope] = of(cqrs_captured, Book)
    previous = ujson.loads(ujson.dumps(envelope.to_wire()))['previous_data']
    assert previous.keys() == {'price'}
    assert isinstance(previous['price'], str)
    assert decimal.Decimal(previous['price']) == decimal.Decimal('1.25')


# --- metadata and correlation ------------------------------------------------------------------


def test_get_cqrs_meta_and_meta_function_reach_a_replica_with_cqrs_meta(loopback):
    author = make_author()

    expected = {'origin': 'tests', 'model': 'author', 'tenant': 'acme'}
    assert ReplicaAuthor.objects.get(pk=author.pk).last_meta == expected

    author.save()
    assert ReplicaAuthor.objects.get(pk=author.pk).last_meta == expected


def test_meta_is_not_passed_to_a_replica_without_cqrs_meta(cqrs_captured, monkeypatch):
    calls = []
    original = ReplicaItem.cqrs_create.__func__

    def spy(cls, sync, mapped_data, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, sync, mapped_data, *args, **kwargs)

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(spy))
    Item.objects.create(sku='A', name='apple')
    [envelope] = cqrs_captured
    assert envelope.meta == {'origin': 'tests', 'model': 'item'}

    assert apply(decode(envelope.to_wire())).outcome == Outcome.CREATED

    assert calls == [{'previous_data': None}]  # no meta=; previous_data by keyword, as django-cqrs


def test_the_correlation_function_result_travels_as_correlation_id(cqrs_captured):
    with cqrs_master_settings(correlation_function=lambda: 'request-42'):
        make_author()

    [envelope] = cqrs_captured
    assert envelope.correlation_id == 'request-42'
    assert decode(ujson.dumps(envelope.to_wire())).correlation_id == 'request-42'


def test_without_a_correlation_function_the_correlation_id_is_null(cqrs_captured):
    make_author()

    assert cqrs_captured[0].correlation_id is None


# --- what is sent: CQRS_FIELDS, CQRS_SERIALIZER, CQRS_MAPPING -----------------------------------


def test_cqrs_fields_limit_the_instance_data(cqrs_captured):
    author = make_author()
    Book.objects.create(title='Dune', price=decimal.Decimal('9.99'), author=author, internal_note='secret')

    [envelope] = of(cqrs_captured, Book)
    assert set(envelope.instance_data) == {'id', 'title', 'price', 'author', 'published', 'cqrs_revision',
                                           'cqrs_updated'}
    assert 'secret' not in ujson.dumps(envelope.to_wire())


def test_cqrs_serializer_output_is_sent_with_the_revision_fields(cqrs_captured):
    book = SerializedBook.objects.create(title='Dune', price=decimal.Decimal('12.50'))

    [envelope] = cqrs_captured
    assert envelope.instance_data == {
        'id': book.pk, 'title': 'Dune', 'price': '12.50', 'cqrs_revision': 0,
        'cqrs_updated': SerializedBook.objects.get(pk=book.pk).cqrs_updated.isoformat(),
    }


def test_a_drf_serialized_row_arrives_on_the_replica(loopback):
    book = SerializedBook.objects.create(title='Dune', price=decimal.Decimal('12.50'))
    book.title = 'Dune Messiah'
    book.save()

    master, replica = SerializedBook.objects.get(pk=book.pk), ReplicaSerializedBook.objects.get(pk=book.pk)
    assert (replica.title, replica.price, replica.cqrs_revision, replica.cqrs_updated) == (
        master.title, master.price, master.cqrs_revision, master.cqrs_updated)
    assert replica.price == decimal.Decimal('12.50')


def test_cqrs_mapping_renames_master_fields_on_the_replica(loopback):
    author = make_author()
    book = make_book(author, title='Dune', price='9.9900')

    replica = ReplicaBook.objects.get(pk=book.pk)
    assert (replica.name, replica.price, replica.author_id) == ('Dune', decimal.Decimal('9.9900'), author.pk)
    assert replica.cqrs_revision == 0


# --- switching publishing off and on -----------------------------------------------------------


def test_cqrs_produce_false_publishes_nothing(cqrs_captured, monkeypatch):
    monkeypatch.setattr(Item, 'CQRS_PRODUCE', False)

    item = Item.objects.create(sku='A', name='apple')
    item.save()
    Item.cqrs.bulk_create([Item(sku='B', name='b')])
    Item.cqrs.bulk_update(Item.objects.all(), quantity=3)
    item.delete()

    assert cqrs_captured == []


def test_a_model_that_does_not_produce_saves_in_no_transaction_of_its_own(cqrs_captured, monkeypatch):
    # Nothing to write besides the row: the save runs Django's own statements only, in autocommit too.
    monkeypatch.setattr(Item, 'CQRS_PRODUCE', False)
    in_transaction = []

    def receiver(sender, instance, using, **kwargs):
        in_transaction.append(connections[using].in_atomic_block)

    post_save.connect(receiver, sender=Item, weak=False)
    try:
        item = Item.objects.create(sku='Q', name='quiet')
        item.name = 'still quiet'
        item.save()
        with transaction.atomic():
            item.save()  # the caller's transaction, as ever
    finally:
        post_save.disconnect(receiver, sender=Item)

    assert in_transaction == [False, False, True]
    assert stored_revision(Item, item.pk) == 2
    assert Item.objects.get(pk=item.pk).name == 'still quiet'
    assert cqrs_captured == []


def test_a_raw_master_publishes_nothing_on_save_or_delete(cqrs_captured):
    note = ManualNote.objects.create(text='hello')
    note.text = 'changed'
    note.save()
    ManualNote.objects.create(text='gone').delete()

    assert cqrs_captured == []
    assert stored_revision(ManualNote, note.pk) == 1


def test_a_raw_master_publishes_through_cqrs_sync(loopback):
    note = ManualNote.objects.create(text='hello')

    assert note.cqrs_sync() is True

    [event] = NoteEvent.objects.all()
    assert event.signal == 'SYNC'
    assert event.payload['data']['text'] == 'hello'
    assert event.payload['data']['cqrs_revision'] == 0
    assert event.payload['meta'] == {'origin': 'tests', 'model': 'manualnote'}


def test_cqrs_sync_of_a_row_that_no_longer_exists_publishes_nothing(cqrs_captured):
    note = ManualNote.objects.create(text='hello')
    ManualNote.objects.filter(pk=note.pk).delete()

    assert note.cqrs_sync() is False
    assert cqrs_captured == []


def test_cqrs_sync_skips_an_instance_that_is_not_a_sync_instance(cqrs_captured, monkeypatch):
    note = ManualNote.objects.create(text='hello')
    monkeypatch.setattr(ManualNote, 'is_sync_instance', lambda self: False)

    assert note.cqrs_sync() is False
    assert cqrs_captured == []


def test_cqrs_sync_publishes_the_stored_state_not_the_unsaved_one(cqrs_captured):
    author = make_author('stored')
    cqrs_captured.clear()
    author.name = 'unsaved'

    author.cqrs_sync()

    [envelope] = cqrs_captured
    assert (envelope.signal_type, envelope.instance_data['name'], envelope.queue) == (SignalType.SYNC, 'stored', None)


# --- directed syncs ----------------------------------------------------------------------------


def drift_author(author):
    ReplicaAuthor.objects.filter(pk=author.pk).update(name='drifted')


def test_a_sync_directed_to_another_queue_is_ignored(loopback):
    author = make_author('Ann')
    drift_author(author)

    author.cqrs_sync(queue='replica_b')

    assert loopback[-1].outcome == Outcome.NOT_FOR_ME
    assert ReplicaAuthor.objects.get(pk=author.pk).name == 'drifted'


def test_a_sync_directed_to_this_queue_repairs_the_replica(loopback):
    author = make_author('Ann')
    drift_author(author)

    author.cqrs_sync(queue=settings.CQRS['queue'])

    assert loopback[-1].outcome == Outcome.UPDATED
    assert ReplicaAuthor.objects.get(pk=author.pk).name == 'Ann'


def test_a_broadcast_sync_repairs_a_replica_that_accepts_broadcast_syncs(loopback):
    author = make_author('Ann')
    drift_author(author)

    author.cqrs_sync()

    assert ReplicaAuthor.objects.get(pk=author.pk).name == 'Ann'


def test_a_replica_with_only_direct_syncs_ignores_a_broadcast_sync(loopback):
    publisher = Publisher.objects.create(name='Ace')
    assert ReplicaPublisher.objects.get(pk=publisher.pk).name == 'Ace'
    ReplicaPublisher.objects.filter(pk=publisher.pk).update(name='drifted')

    publisher.cqrs_sync()

    assert loopback[-1].outcome == Outcome.NOT_FOR_ME
    assert ReplicaPublisher.objects.get(pk=publisher.pk).name == 'drifted'


def test_a_replica_with_only_direct_syncs_applies_a_directed_sync(loopback):
    publisher = Publisher.objects.create(name='Ace')
    ReplicaPublisher.objects.filter(pk=publisher.pk).update(name='drifted')

    publisher.cqrs_sync(queue=settings.CQRS['queue'])

    assert loopback[-1].outcome == Outcome.UPDATED
    assert ReplicaPublisher.objects.get(pk=publisher.pk).name == 'Ace'


# --- bulk operations ---------------------------------------------------------------------------


def test_bulk_create_publishes_one_event_per_row(loopback):
    with received(post_bulk_create, Item) as signals:
        created = Item.cqrs.bulk_create([Item(sku=sku, name=f'item {sku}', quantity=i)
                                         for i, sku in enumerate('ABC')])

    assert [r.outcome for r in loopback] == [Outcome.CREATED] * 3
    for sku in 'ABC':
        assert_item_replicated(sku)
        assert stored_revision(Item, sku) == 0
    [signal] = signals
    assert [i.pk for i in signal['instances']] == [i.pk for i in created] == list('ABC')


def test_bulk_create_under_deleted_pks_continues_their_revisions(loopback):
    Item.objects.create(sku='A', name='first life').delete()

    Item.cqrs.bulk_create([Item(sku='A', name='second life')])

    assert stored_revision(Item, 'A') == 2
    assert_item_replicated('A')


def test_bulk_update_bumps_revisions_and_publishes_one_event_per_row(loopback):
    for sku in 'ABC':
        Item.objects.create(sku=sku, name=sku)
    loopback.clear()

    with received(post_update, Item) as signals:
        count = Item.cqrs.bulk_update(Item.objects.filter(sku__in=['A', 'B']), quantity=7)

    assert count == 2
    assert [r.outcome for r in loopback] == [Outcome.UPDATED] * 2
    for sku in 'AB':
        assert stored_revision(Item, sku) == 1
        assert_item_replicated(sku)
        assert ReplicaItem.objects.get(pk=sku).quantity == 7
    assert ReplicaItem.objects.get(pk='C').cqrs_revision == 0
    [signal] = signals
    assert sorted(i.pk for i in signal['instances']) == ['A', 'B']
    assert all(i.quantity == 7 for i in signal['instances'])


def test_bulk_update_with_a_filter_on_the_updated_field_still_publishes_every_row(loopback):
    for sku in 'AB':
        Item.objects.create(sku=sku, name=sku, quantity=1)
    loopback.clear()

    Item.cqrs.bulk_update(Item.objects.filter(quantity=1), quantity=2)

    assert len(loopback) == 2
    assert set(ReplicaItem.objects.values_list('quantity', flat=True)) == {2}


def test_bulk_update_in_a_rolled_back_transaction_publishes_nothing(cqrs_captured):
    Item.objects.create(sku='A', name='a')
    cqrs_captured.clear()

    with contextlib.suppress(Rollback), transaction.atomic():
        Item.cqrs.bulk_update(Item.objects.all(), quantity=9)
        raise Rollback

    assert cqrs_captured == []
    assert stored_revision(Item, 'A') == 0


# --- update_fields -----------------------------------------------------------------------------


def test_saving_only_a_field_that_is_not_replicated_neither_bumps_nor_publishes(cqrs_captured):
    book = make_book(make_author())
    cqrs_captured.clear()

    book.internal_note = 'master only'
    book.save(update_fields=['internal_note'])

    assert cqrs_captured == []
    assert stored_revision(Book, book.pk) == 0
    assert Book.objects.get(pk=book.pk).internal_note == 'master only'


def test_saving_a_replicated_field_with_update_fields_alone_neither_bumps_nor_publishes(cqrs_captured):
    # as in django-cqrs: update_fields saves are master-only unless told otherwise
    book = make_book(make_author(), title='old')
    cqrs_captured.clear()

    book.title = 'new'
    book.save(update_fields=['title'])

    assert cqrs_captured == []
    assert stored_revision(Book, book.pk) == 0
    assert Book.objects.get(pk=book.pk).title == 'new'


def test_update_cqrs_fields_true_bumps_and_publishes_a_master_only_change(loopback):
    book = make_book(make_author())
    loopback.clear()

    book.internal_note = 'note'
    book.save(update_fields=['internal_note'], update_cqrs_fields=True)

    assert stored_revision(Book, book.pk) == 1
    assert [r.outcome for r in loopback] == [Outcome.UPDATED]
    assert ReplicaBook.objects.get(pk=book.pk).cqrs_revision == 1


def test_cqrs_auto_update_fields_bumps_and_publishes_every_update_fields_save(loopback):
    book = make_book(make_author())
    loopback.clear()

    with cqrs_master_settings(CQRS_AUTO_UPDATE_FIELDS=True):
        book.internal_note = 'note'
        book.save(update_fields=['internal_note'])

    assert stored_revision(Book, book.pk) == 1
    assert [r.outcome for r in loopback] == [Outcome.UPDATED]


def test_a_master_only_save_after_a_replicated_one_in_a_transaction_keeps_the_replicated_change(cqrs_captured):
    book = make_book(make_author(), title='old')
    cqrs_captured.clear()

    with transaction.atomic():
        book.title = 'new'
        book.save()
        book.internal_note = 'note'
        book.save(update_fields=['internal_note'])

    [envelope] = of(cqrs_captured, Book)
    assert (envelope.instance_data['title'], envelope.revision) == ('new', 1)


# --- primary keys given in another type --------------------------------------------------------


def test_a_row_created_with_its_uuid_pk_given_as_text_is_published(loopback):
    pk = '6f1d5a4e-2b7c-4d3a-9e8f-0a1b2c3d4e5f'

    AllFields.objects.create(id=pk, char='text pk')

    assert ReplicaAllFields.objects.get(pk=pk).char == 'text pk'


def test_a_row_saved_with_its_integer_pk_given_as_text_is_published(loopback):
    author = make_author('Ann')

    Author(id=str(author.pk), name='renamed').save()

    replica = ReplicaAuthor.objects.get(pk=author.pk)
    assert (replica.name, replica.cqrs_revision) == ('renamed', 1)


def test_saving_a_fresh_instance_over_an_existing_pk_continues_its_revision(loopback):
    Item.objects.create(sku='A', name='apple').save()

    Item(sku='A', name='overwritten').save()

    assert stored_revision(Item, 'A') == 2
    assert_item_replicated('A')


# --- metadata and correlation hooks (django-cqrs call shapes) ---------------------------------

def _meta_settings(**master):
    from django.conf import settings
    from django.test import override_settings

    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'], **master}})


def djcqrs_meta(obj, instance_data, previous_data, signal_type):
    return {'pk': obj.pk, 'name': instance_data['name'], 'signal': str(signal_type), 'previous': previous_data}


def none_meta(instance, **kwargs):
    return None


def list_meta(**kwargs):
    return ['x']


def djcqrs_correlation(signal_type, cqrs_id, instance_pk, queue):
    return f'{cqrs_id}-{instance_pk}-{signal_type}'


@pytest.mark.django_db(transaction=True)
def test_a_django_cqrs_style_meta_function_is_called_with_its_own_keywords():
    from cqrs_celery.testing import capture_envelopes

    with _meta_settings(meta_function='tests.test_master_api.djcqrs_meta'), capture_envelopes() as sent:
        publisher = Publisher.objects.create(name='P')
    assert sent[0].meta == {'pk': publisher.pk, 'name': 'P', 'signal': 'SAVE', 'previous': None}


@pytest.mark.django_db(transaction=True)
def test_a_meta_function_returning_none_means_no_metadata():
    from cqrs_celery.testing import capture_envelopes

    with _meta_settings(meta_function='tests.test_master_api.none_meta'), capture_envelopes() as sent:
        Publisher.objects.create(name='P')
    assert sent[0].meta is None


@pytest.mark.django_db(transaction=True)
def test_a_meta_function_returning_something_else_fails_the_save_naming_the_function():
    from cqrs_celery import MetaError

    with _meta_settings(meta_function='tests.test_master_api.list_meta'), \
            pytest.raises(MetaError, match=r'tests\.test_master_api\.list_meta.*must return a dict or None, not list'):
        Publisher.objects.create(name='P')
    assert not Publisher.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_hooks_signatures_are_read_once_not_at_every_save(monkeypatch):
    """Each save hands ``get_cqrs_meta`` over as a new bound method: its signature is still read only once."""
    import inspect

    from cqrs_celery.master import hooks
    from cqrs_celery.testing import capture_envelopes

    read = []
    signature = inspect.signature
    monkeypatch.setattr(hooks.inspect, 'signature', lambda function, *args, **kwargs: (
        read.append(function), signature(function, *args, **kwargs))[1])
    hooks._signature_names.cache_clear()
    with _meta_settings(meta_function='tests.test_master_api.djcqrs_meta'), capture_envelopes() as sent:
        Author.objects.create(name='first')
        first = len(read)
        authors = [Author.objects.create(name=f'A{n}') for n in range(5)]
    assert len(read) == first
    assert [envelope.meta for envelope in sent[1:]] == [
        {'pk': author.pk, 'name': author.name, 'signal': 'SAVE', 'previous': {'name': None}, 'tenant': 'acme'}
        for author in authors]


def test_a_bound_method_takes_the_keywords_its_function_names_after_the_instance():
    from cqrs_celery.master.hooks import _accepted, names_parameter, wants_keyword

    class Hooks:
        def named(self, signal_type, instance_data=None):
            return None

        def anything(self, **kwargs):
            return None

        def positional(*args, signal_type=None):
            return None

        @classmethod
        def of_class(cls, obj):
            return None

        def __call__(self, queue):
            return None

        __hash__ = None  # an unhashable callable is read every time, and still works

    hooks = Hooks()
    assert _accepted(hooks.named) == {'signal_type', 'instance_data'}
    assert _accepted(hooks.anything) is None and wants_keyword(hooks.anything, 'instance_data')
    assert _accepted(hooks.positional) == {'signal_type'}
    assert _accepted(Hooks.of_class) == {'obj'} and names_parameter(Hooks.of_class, 'obj')
    assert _accepted(hooks) == {'queue'} and not wants_keyword(hooks, 'signal_type')
    assert _accepted(Hooks.named) == {'self', 'signal_type', 'instance_data'}  # the function itself
    assert _accepted(print) == {'sep', 'end', 'file', 'flush'}


@pytest.mark.django_db(transaction=True)
def test_a_django_cqrs_style_correlation_function_gets_its_arguments():
    from cqrs_celery.testing import capture_envelopes

    with _meta_settings(correlation_function='tests.test_master_api.djcqrs_correlation'), \
            capture_envelopes() as sent:
        publisher = Publisher.objects.create(name='P')
    assert sent[0].correlation_id == f'publisher-{publisher.pk}-SAVE'


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('model_name', ['MasterTombstone', 'ReplicaTombstone'])
def test_a_tombstone_keeps_the_highest_revision_and_its_time(model_name):
    import datetime

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from cqrs_celery import models as cqrs_models

    model = getattr(cqrs_models, model_name)
    record = functools.partial(cqrs_models.record_tombstone, model, 'default', 'item')

    def stored(pk):
        return model.objects.filter(cqrs_id='item', pk_value=pk).values_list('revision', 'deleted_at').get()

    before = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        record(7, 3)
    assert len(queries) == (1 if connection.vendor in ('postgresql', 'sqlite') else 3)
    revision, first = stored('7')
    assert revision == 3 and before - datetime.timedelta(seconds=1) <= first <= timezone.now()
    record(7, 2)  # older: kept out
    assert stored('7') == (3, first)
    record(7, 3)  # the same: nothing changes
    assert stored('7') == (3, first)
    record(7, 5)
    revision, later = stored('7')
    assert revision == 5 and later >= first
    record(8, 9)  # another pk, and a key of any length
    record('k' * 3000, 1)
    assert stored('7') == (5, later)
    assert stored('8')[0] == 9
    assert model.objects.get(pk_value='k' * 3000).revision == 1
    assert model.objects.filter(cqrs_id='item').count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_primary_key_of_any_length_is_saved_deleted_and_re_created_on_both_sides(loopback):
    from cqrs_celery.models import MasterTombstone, ReplicaTombstone
    from tests.master_app.models import LongKey
    from tests.replica_app.models import ReplicaLongKey

    key = 'k' * 5000
    row = LongKey.objects.create(key=key, value=1)
    row.value = 2
    row.save()
    row.delete()
    assert MasterTombstone.objects.get(cqrs_id='long_key').revision == 2
    assert ReplicaTombstone.objects.get(cqrs_id='long_key').revision == 2
    again = LongKey.objects.create(key=key, value=3)

    assert again.cqrs_revision == 3
    copy = ReplicaLongKey.objects.get(pk=key)
    assert (copy.value, copy.cqrs_revision) == (3, 3)
    assert not ReplicaTombstone.objects.filter(cqrs_id='long_key').exists()


@pytest.mark.django_db(transaction=True)
def test_a_custom_field_travels_by_its_own_value_to_string(loopback):
    from tests.master_app.fields import Blob
    from tests.master_app.models import Gadget
    from tests.replica_app.models import ReplicaGadget

    gadget = Gadget.objects.create(blob=Blob('abc'))

    assert ReplicaGadget.objects.get(pk=gadget.pk).blob == 'blob:abc'


@pytest.mark.django_db(transaction=True)
def test_a_custom_field_value_that_cannot_be_sent_is_refused_at_save(loopback):
    from tests.master_app.fields import Blob
    from tests.master_app.models import Gadget

    with pytest.raises(DataError, match=r'Gadget\.opaque: a Blob value cannot be sent'):
        Gadget.objects.create(opaque=Blob('x'))
    assert not Gadget.objects.exists()
    Gadget.objects.create(opaque=None)  # a value JSON carries is fine


@pytest.mark.django_db(transaction=True)
def test_a_get_cqrs_meta_returning_something_else_fails_the_save_naming_the_model(monkeypatch):
    from cqrs_celery import MetaError
    from cqrs_celery.models import OutboxEvent

    monkeypatch.setattr(Publisher, 'get_cqrs_meta', lambda self, **kwargs: ['x'])
    with pytest.raises(MetaError, match=r'Publisher\.get_cqrs_meta\(\) must return a dict or None, not list'):
        Publisher.objects.create(name='P')
    assert not Publisher.objects.exists() and not OutboxEvent.objects.exists()


def nested(levels):
    value = {}
    for _ in range(levels - 1):
        value = {'a': value}
    return value


def test_a_json_value_nested_deeper_than_replica_queues_accept_is_refused_at_save(loopback):
    deepest = 100 - ENVELOPE_LEVELS  # max_nesting_depth by default

    with pytest.raises(DataError, match='document: the value nests deeper'):
        AllFields.objects.create(document=nested(deepest + 1))
    row = AllFields.objects.create(document=nested(deepest))

    assert ReplicaAllFields.objects.get(pk=row.pk).document == nested(deepest)
    assert AllFields.objects.count() == 1


def test_metadata_nested_deeper_than_replica_queues_accept_fails_the_save(monkeypatch):
    monkeypatch.setattr(Author, 'get_cqrs_meta', lambda self, **kwargs: nested(2000))

    with pytest.raises(MetaError, match=r'returned metadata that nests deeper than 95 levels'):
        Author.objects.create(name='deep')
    assert not Author.objects.exists()


def test_a_multi_table_child_reads_and_locks_the_revision_in_its_parents_table(cqrs_captured):
    truck = Truck.objects.create(plate='T', load=1)
    stale = Truck.objects.get(pk='T')
    truck.load = 2
    truck.save()  # revision 1 in the parent's table; the stale instance still has 0

    stale.delete()

    assert MasterTombstone.objects.get(cqrs_id='truck', pk_value='T').revision == 2
    assert [(e.signal_type, e.revision, e.instance_data.get('load')) for e in of(cqrs_captured, Truck)] == [
        (SignalType.SAVE, 0, 1), (SignalType.SAVE, 1, 2), (SignalType.DELETE, 2, None)]
    assert not Vehicle.objects.exists()
