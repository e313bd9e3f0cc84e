"""Outbox events written by database triggers (master/triggers.py): a plain model's save is one
statement, and what gets published is exactly what the Python outbox path publishes.

Tier i on PostgreSQL and SQLite: envelopes are captured (``capture_envelopes`` publishes inline).
Tracked fields' old values reach PostgreSQL's trigger only (SQLite has no setting to hand them by).
"""

import contextlib
import datetime
import uuid

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cqrs_celery import SignalType
from cqrs_celery.master import outbox, triggers
from cqrs_celery.models import MasterTombstone, OutboxEvent, tombstone_revision
from cqrs_celery.serialization import to_json
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import AllFields, Author, Book, CompatTrackedBulk, Item, Publisher

pytestmark = pytest.mark.django_db(transaction=True)
POSTGRES = settings.DATABASE_KIND == 'postgres'
postgres_only = pytest.mark.skipif(not POSTGRES, reason='tracked fields reach the trigger on PostgreSQL only')


def without_meta():
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'], 'meta_function': None}})


@pytest.fixture
def installed():
    """Triggers installed as `migrate` installs them for a project whose models have nothing to add."""
    with without_meta():
        done = triggers.install('default')
    triggers.forget()
    yield done
    triggers.install('default')  # the test settings have a meta_function: triggers dropped again
    triggers.forget()


def test_migrate_installs_triggers_only_on_models_with_nothing_for_python_to_add(installed):
    names = ' '.join(installed)
    assert 'master_app_item' in names and 'master_app_publisher' in names
    # tracked fields: on PostgreSQL save() hands the old values to the trigger; SQLite keeps the Python path
    assert ('master_app_book' in names) is POSTGRES
    assert 'master_app_author' not in names  # its own get_cqrs_meta
    with without_meta():
        assert triggers.active('default', Item) and not triggers.active('default', Author)
    assert not triggers.active('default', Item)  # with a meta_function, Python has something to add


def test_a_save_with_a_trigger_is_one_statement_and_publishes_the_committed_row(installed):
    with without_meta():
        assert triggers.active('default', Item)  # looked up once per process and table
    with without_meta(), capture_envelopes() as sent, CaptureQueriesContext(connection) as queries:
        item = Item.objects.create(sku='T1', name='one', quantity=1)

    assert queries.captured_queries[0]['sql'].startswith('INSERT INTO "master_app_item"'), 'no transaction of ours'
    inserts = [q for q in queries.captured_queries if q['sql'].startswith('INSERT')]
    assert len(inserts) == 1, 'the event is written by the database, not by a second INSERT'
    assert [(e.signal_type, e.instance_pk, e.instance_data['name'], e.revision) for e in sent] == \
        [(SignalType.SAVE, 'T1', 'one', 0)]
    assert not OutboxEvent.objects.exists()

    with without_meta(), capture_envelopes() as sent:
        item.name = 'two'
        item.save()
    assert [(e.instance_data['name'], e.revision) for e in sent] == [('two', 1)]
    item.refresh_from_db()
    assert item.cqrs_revision == 1


def test_a_write_that_does_not_bump_the_revision_writes_no_event(installed):
    with without_meta(), capture_envelopes():
        Publisher.objects.create(name='p')
    with without_meta(), capture_envelopes() as sent:
        Publisher.objects.update(name='raw')  # not a cqrs change: no revision, no event
    assert sent == [] and not OutboxEvent.objects.exists()


def test_a_row_re_created_after_its_delete_continues_its_revisions(installed):
    with without_meta(), capture_envelopes() as sent:
        item = Item.objects.create(sku='R', name='a')
        item.save()
        item.delete()
        again = Item.objects.create(sku='R', name='b')

    assert again.cqrs_revision == 3
    assert [(e.signal_type, e.revision) for e in sent] == [(SignalType.SAVE, 0), (SignalType.SAVE, 1),
                                                           (SignalType.DELETE, 2), (SignalType.SAVE, 3)]


def test_in_a_transaction_events_go_out_after_commit_and_a_rollback_sends_nothing(installed):
    with without_meta(), capture_envelopes() as sent:
        with transaction.atomic():
            Item.objects.create(sku='X', name='x')
            assert sent == []
        assert [e.instance_pk for e in sent] == ['X']

        class Rollback(Exception):
            pass

        with pytest.raises(Rollback), transaction.atomic():
            Item.objects.create(sku='Y', name='y')
            raise Rollback
    assert [e.instance_pk for e in sent] == ['X']
    assert not OutboxEvent.objects.exists()


def test_bulk_operations_are_published_through_the_trigger(installed):
    with without_meta(), capture_envelopes() as sent:
        Item.cqrs.bulk_create([Item(sku=f'b{i}', name='n') for i in range(5)])
        Item.cqrs.bulk_update(Item.objects.filter(sku__in=['b1', 'b2']), name='changed')

    published = {(e.instance_pk, e.revision) for e in sent}
    assert {(f'b{i}', 0) for i in range(5)} <= published
    assert {('b1', 1), ('b2', 1)} <= published


def test_a_meta_function_set_later_takes_the_python_path_and_its_meta_travels(installed):
    with capture_envelopes() as sent:  # the test settings' meta_function is back
        Item.objects.create(sku='M', name='m')

    assert len(sent) == 1  # the trigger's event and Python's event of the row go out once
    assert sent[0].meta == {'origin': 'tests', 'model': 'item'}

    with capture_envelopes() as sent:
        publisher = Publisher.objects.create(name='p')
        with transaction.atomic():
            publisher.delete()
            # (on PostgreSQL the trigger, installed without the meta_function, writes one too)
            assert OutboxEvent.objects.filter(signal_type='DELETE').count() == (2 if POSTGRES else 1)
    assert [(e.signal_type, e.revision, e.meta) for e in sent] == [
        (SignalType.SAVE, 0, {'origin': 'tests', 'model': 'publisher'}),
        (SignalType.DELETE, 1, {'origin': 'tests', 'model': 'publisher'})], 'one DELETE, with its metadata'


class Rollback(Exception):
    pass


def tracked_story():
    """Saves of models with tracked fields, every way a row's event can be written."""
    author = Author.objects.create(id=1, name='a')  # its own get_cqrs_meta: the Python path
    book = Book.objects.create(id=1, title='t1', price=1, author=author)
    book.title = 't2'
    book.save()
    book.price, book.title = 2, 't3'
    book.save()
    with transaction.atomic():
        book.title = 't4'
        book.save()
        book.price = 3
        book.save()  # the same instance again: the revision stays, the old values merge
    with transaction.atomic():
        other = Book.objects.get(pk=1)
        book.title = 't5'
        book.save()
        other.price = 4
        other.save()  # another instance of the row in the same transaction
    with transaction.atomic():
        book.title = 't6'
        book.save()
        with contextlib.suppress(Rollback), transaction.atomic():
            book.price = 5
            book.save()
            raise Rollback
        book.save()
    book.internal_note = 'master only'
    book.save(update_fields=['internal_note'])
    book.title = 't7'
    book.save(update_fields=['title'], update_cqrs_fields=True)
    CompatTrackedBulk(id=7, status='new').save()  # a pk given: the UPDATE finds nothing, then the INSERT
    CompatTrackedBulk.objects.get(id=7).delete()
    CompatTrackedBulk.objects.create(id=7, status='again')  # the tombstone's revision and the payload
    CompatTrackedBulk.cqrs.bulk_create([CompatTrackedBulk(id=i, status='b') for i in (8, 9)])
    CompatTrackedBulk.cqrs.bulk_update(CompatTrackedBulk.objects.filter(id=8), status='c')


def published(envelopes):
    return sorted(
        ((e.cqrs_id, e.signal_type.value, str(e.instance_pk), e.revision, e.previous_data,
          {k: v for k, v in e.instance_data.items() if k != 'cqrs_updated'}) for e in envelopes),
        key=repr)


@postgres_only
def test_models_with_tracked_fields_publish_through_the_trigger_exactly_what_the_python_path_publishes(installed):
    with without_meta():
        assert triggers.active('default', Book) and triggers.active('default', CompatTrackedBulk)
        with capture_envelopes() as sent:
            tracked_story()
    by_trigger = published(sent)

    for model in (Book, CompatTrackedBulk, Author, MasterTombstone, OutboxEvent):  # (the triggers record
        model.objects.all()._raw_delete('default')                                # these deletions too)
    triggers.install('default')  # the test settings' meta_function: no model qualifies, triggers dropped
    triggers.forget()
    with without_meta():
        assert not triggers.active('default', Book)
        with capture_envelopes() as sent:
            tracked_story()

    assert published(sent) == by_trigger
    merged = {(revision, str(sorted(previous.items()))) for cqrs_id, _, _, revision, previous, _ in by_trigger
              if cqrs_id == 'book'}
    assert (3, str([('price', 2), ('title', 't3')])) in merged  # the same instance saved twice
    assert (5, str([('price', '3.0000'), ('title', 't4')])) in merged  # two instances of the row
    assert (7, str([('price', 3), ('title', 't5')])) in merged  # a save rolled back with its savepoint
    assert not OutboxEvent.objects.exists()


@postgres_only
def test_a_tracked_save_with_the_trigger_is_one_statement_carrying_previous_data(installed):
    with without_meta(), capture_envelopes():
        author = Author.objects.create(name='a')
        assert triggers.active('default', Book)  # looked up once per process and table
    with without_meta(), capture_envelopes() as sent, CaptureQueriesContext(connection) as queries:
        book = Book.objects.create(title='t1', price=1, author=author)
        book.title = 't2'
        book.save()

    statements = [q['sql'] for q in queries.captured_queries]
    assert statements[0].startswith('INSERT INTO "master_app_book"'), 'no transaction of ours'
    writes = [sql.split()[0] for sql in statements if sql.startswith(('INSERT INTO "master_app_book"',
                                                                      'UPDATE "master_app_book"'))]
    assert writes == ['INSERT', 'UPDATE']
    assert not [sql for sql in statements if sql.startswith('INSERT INTO "cqrs_celery_outboxevent"')], \
        'the events are written by the database'
    assert [e.previous_data for e in sent] == [{'title': None, 'price': None}, {'title': 't1'}]
    assert not OutboxEvent.objects.exists()


@postgres_only
def test_a_trigger_that_stores_no_payload_is_not_used_for_a_model_with_tracked_fields(installed):
    function = connection.ops.quote_name(triggers.trigger_name(Book))
    with connection.cursor() as cursor:  # the function as a version before tracked fields installed it
        cursor.execute(f'''CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO cqrs_celery_outboxevent (cqrs_id, pk_value, signal_type, revision, envelope, created,
                                                     attempts, error, available_at, set_aside)
                VALUES ('book', to_jsonb(NEW.id)::text, 'SAVE', NEW.cqrs_revision, '', now(), 0, '', now(), false);
                RETURN NULL;
            END $$''')
    triggers.forget()
    with without_meta():
        assert not triggers.active('default', Book), 'its events would lose previous_data'
        assert triggers.active('default', Item)
        with capture_envelopes() as sent:
            Book.objects.create(title='t1', price=1, author=Author.objects.create(name='a'))
    book_events = [e for e in sent if e.cqrs_id == 'book']
    assert [e.previous_data for e in book_events] == [{'title': None, 'price': None}]


@postgres_only
def test_bulk_operations_on_a_tracked_model_put_the_old_values_on_the_triggers_own_events(installed):
    with without_meta(), capture_envelopes() as sent, transaction.atomic():
        CompatTrackedBulk.cqrs.bulk_create([CompatTrackedBulk(id=i, status='b') for i in range(5)])
        CompatTrackedBulk.cqrs.bulk_update(CompatTrackedBulk.objects.filter(id__in=[1, 2]), status='c')
        events = list(OutboxEvent.objects.order_by('id').values_list('pk_value', 'revision', 'envelope'))

    # One event per row and change, each with its payload: none can be published apart from its old values.
    assert [(pk, revision) for pk, revision, _ in events] == [(str(i), 0) for i in range(5)] + [('1', 1), ('2', 1)]
    assert all(envelope for *_, envelope in events)
    # (a row created and updated in one transaction is published once: the values before the first change)
    assert sorted((e.instance_pk, e.revision, e.previous_data) for e in sent) == [
        (0, 0, {'status': None}), (1, 1, {'status': None, 'description': None}),
        (2, 1, {'status': None, 'description': None}), (3, 0, {'status': None}), (4, 0, {'status': None})]


def test_the_triggers_name_rows_and_stamp_events_as_python_does(installed):
    # A text pk (quote, slash, non-ASCII), an integer pk (PostgreSQL writes its text), a UUID pk.
    with without_meta(), capture_envelopes() as sent, transaction.atomic():
        Item.objects.create(sku='a"b/\u00e9', name='n')
        Publisher.objects.create(name='p')
        row = AllFields.objects.create(big=1)  # SQLite: Django stores the UUID as 32 hex digits
        events = list(OutboxEvent.objects.order_by('id').values_list('pk_value', 'revision', 'created',
                                                                    'available_at', 'set_aside'))
    publisher = Publisher.objects.get()
    assert [e[:2] for e in events] == [(outbox.outbox_pk('a"b/\u00e9'), 0), (outbox.outbox_pk(publisher.pk), 0),
                                       (outbox.outbox_pk(str(row.pk)), 0)]
    for _, _, created, available_at, set_aside in events:  # read back as Django reads its own datetimes
        assert created.tzinfo is not None and abs((timezone.now() - created).total_seconds()) < 60
        assert available_at == created and set_aside is False
    assert [e.instance_pk for e in sent] == ['a"b/\u00e9', publisher.pk, str(row.pk)]


def test_no_trigger_is_installed_where_the_router_keeps_the_outbox_table_out(installed, monkeypatch):
    tables = [t for t in connection.introspection.table_names() if t != OutboxEvent._meta.db_table]
    monkeypatch.setattr(type(connection.introspection), 'table_names', lambda self, *args, **kwargs: tables)
    with without_meta():
        assert triggers.install('default') == []  # its INSERT would fail every save of the model
        triggers.forget()
        assert not triggers.active('default', Item)


def deletion_story():
    """Deletes of an integer-pk and a UUID-pk model: plain, of a stale instance, in bulk, rolled back."""
    publisher = Publisher.objects.create(id=7, name='p')  # the same pks on each path
    stale = Publisher.objects.get(pk=publisher.pk)
    publisher.save()
    publisher.save()
    stale.delete()  # revision 2 in the database: the deletion's is 3
    rows = [AllFields.objects.create(id=uuid.UUID(int=i + 1), big=i) for i in range(3)]
    rows[0].save()
    AllFields.objects.filter(big__in=[0, 1]).delete()
    with contextlib.suppress(Rollback), transaction.atomic():
        rows[2].delete()
        raise Rollback
    item = Item.objects.create(sku='a"b/\u00e9\u2028', name='n')  # text: a quote, a slash, non-ASCII
    item.save()
    item.delete()
    Item.objects.create(sku='plain', name='n').delete()
    return [publisher.pk, *(row.pk for row in rows), 'a"b/\u00e9\u2028', 'plain']


def deletions(envelopes):
    return sorted(((e.cqrs_id, str(e.instance_pk), e.revision, e.meta, e.correlation_id, e.previous_data,
                    {k: str(v) for k, v in e.instance_data.items() if k != 'cqrs_updated'})
                   for e in envelopes if e.signal_type == SignalType.DELETE), key=repr)


def tombstones():
    return sorted(MasterTombstone.objects.values_list('cqrs_id', 'pk_value', 'pk_hash', 'revision'))


@postgres_only
def test_a_delete_through_the_trigger_publishes_and_records_what_the_python_path_does(installed):
    with without_meta():
        assert triggers.deletes_active('default', Publisher) and triggers.deletes_active('default', AllFields)
        assert triggers.deletes_active('default', Item)
        with capture_envelopes() as sent:
            pks = deletion_story()
    by_trigger, stored = deletions(sent), tombstones()
    assert not OutboxEvent.objects.exists()

    for model in (Publisher, AllFields, Item):
        model.objects.all()._raw_delete('default')
    with connection.cursor() as cursor:  # the tables' triggers as a version that recorded no deletions had them
        for model in (Publisher, AllFields, Item):
            table = connection.ops.quote_name(model._meta.db_table)
            name = connection.ops.quote_name(triggers.trigger_name(model))
            cursor.execute(f'DROP TRIGGER {name} ON {table}')
            cursor.execute(f'CREATE TRIGGER {name} AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION '
                           f'{name}()')
    for model in (MasterTombstone, OutboxEvent):
        model.objects.all()._raw_delete('default')
    triggers.forget()
    with without_meta():
        assert not triggers.deletes_active('default', Publisher), 'the trigger records no deletions'
        assert triggers.state('default', Publisher) == triggers.TRIGGER_MISSING
        with capture_envelopes() as sent:
            deletion_story()

    assert deletions(sent) == by_trigger
    assert tombstones() == stored
    # Found as Python finds them (the pk's text and its hash agree); the rolled-back deletion left none.
    found = [tombstone_revision(MasterTombstone, 'default', cqrs_id, to_json(pk))
             for cqrs_id, pk in zip(['publisher', *['all_fields'] * 3, 'item', 'item'], pks, strict=True)]
    assert found == [3, 2, 1, None, 2, 1]


@postgres_only
def test_a_delete_through_the_trigger_is_the_plain_delete_and_carries_the_time_of_the_deletion(installed):
    with without_meta(), capture_envelopes():
        publisher = Publisher.objects.create(name='p')
        assert triggers.deletes_active('default', Publisher)
    pk = publisher.pk
    with without_meta(), capture_envelopes() as sent, CaptureQueriesContext(connection) as queries:
        before = timezone.now()
        publisher.delete()

    statements = [q['sql'].split()[0] for q in queries.captured_queries]
    assert statements[:3] == ['BEGIN', 'DELETE', 'COMMIT'], 'no lock, no tombstone, no event written by Python'
    [envelope] = sent
    assert envelope.signal_type == SignalType.DELETE and envelope.revision == 1
    updated = datetime.datetime.fromisoformat(envelope.instance_data['cqrs_updated'])
    assert updated.tzinfo is not None and abs((updated - before).total_seconds()) < 60
    assert envelope.instance_data['id'] == envelope.instance_pk == pk


@postgres_only
def test_a_row_deleted_by_any_statement_reaches_the_outbox(installed):
    with without_meta(), capture_envelopes():
        publisher = Publisher.objects.create(name='p')
    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {connection.ops.quote_name(Publisher._meta.db_table)}')
    [(signal_type, revision)] = OutboxEvent.objects.values_list('signal_type', 'revision')
    assert (signal_type, revision) == ('DELETE', 1)
    with capture_envelopes() as sent:
        outbox.drain('default')
    assert [(e.signal_type, e.instance_pk, e.revision) for e in sent] == [(SignalType.DELETE, publisher.pk, 1)]


@postgres_only
def test_a_trigger_recording_deletions_a_model_now_sends_custom_data_for_is_stale(installed, monkeypatch):
    monkeypatch.setattr(Publisher, 'get_custom_cqrs_delete_data', lambda self: {'why': 'closed'})
    with without_meta():
        assert not triggers.deletes_active('default', Publisher)
        assert triggers.state('default', Publisher) == triggers.TRIGGER_STALE
        assert triggers.install('default')
        triggers.forget()
        assert triggers.state('default', Publisher) == triggers.BY_TRIGGER
        with capture_envelopes() as sent:
            Publisher.objects.create(name='p').delete()
    assert [e.instance_data.get('custom') for e in sent if e.signal_type == SignalType.DELETE] == [{'why': 'closed'}]
    assert not OutboxEvent.objects.exists()
