"""Outbox events written by PostgreSQL triggers (master/triggers.py): a plain model's save is one
statement, and what gets published is exactly what the Python outbox path publishes.

Tier i on PostgreSQL: envelopes are captured (``capture_envelopes`` publishes inline).
"""

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from cqrs_celery import SignalType
from cqrs_celery.master import triggers
from cqrs_celery.models import OutboxEvent
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import Author, Item, Publisher

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(settings.DATABASE_KIND != 'postgres', reason='outbox triggers are PostgreSQL only'),
]


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
    assert 'master_app_author' not in names  # tracked fields and its own get_cqrs_meta
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
