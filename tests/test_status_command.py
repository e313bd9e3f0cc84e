"""``manage.py cqrs_status``: per CQRS_ID rows, outbox, unroutable, reconciliation; this service's queues."""

import datetime
import json
import sys
import types
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from cqrs_celery.models import OutboxEvent
from cqrs_celery.testing import apply_in_process, capture_envelopes
from tests.master_app.models import Author, Item

pytestmark = pytest.mark.django_db(transaction=True)


def status(*args):
    out = StringIO()
    call_command('cqrs_status', *args, stdout=out)
    return out.getvalue()


def by_id(found):
    return {row['cqrs_id']: row for row in found['models']}


def test_rows_on_both_sides_and_the_outbox_backlog_per_cqrs_id():
    with apply_in_process():
        Author.objects.create(name='a')
        Author.objects.create(name='b')
    with capture_envelopes():
        Item.objects.create(sku='only-master', name='n')
    OutboxEvent.objects.create(cqrs_id='author', pk_value='1', created=timezone.now() - datetime.timedelta(minutes=5))
    OutboxEvent.objects.create(cqrs_id='author', pk_value='2', set_aside=True, error='boom')

    found = by_id(json.loads(status('--json')))

    author = found['author']
    assert (author['master_rows'], author['replica_rows']) == (2, 2)
    assert (author['outbox_waiting'], author['outbox_set_aside']) == (1, 1)
    assert 299 <= author['outbox_oldest_age'] < 400
    assert (found['item']['master_rows'], found['item']['replica_rows'], found['item']['outbox_waiting']) == (1, 0, 0)
    assert found['manual_note']['replica_rows'] == '-'  # a replica without a table


def test_the_table_has_a_line_per_cqrs_id_and_the_queue_depths():
    with capture_envelopes():
        Item.objects.create(sku='x', name='n')

    text = status()

    header, *lines = text.splitlines()
    assert header.split()[:3] == ['CQRS_ID', 'master', 'rows']
    assert any(line.split()[:3] == ['item', '1', '0'] for line in lines)
    assert 'replica queue replica_a: 0 messages waiting' in text
    assert 'dead-letter queue dead_letter_replica_a: 0 letters' in text


def test_queue_depth_counts_the_messages_waiting_on_the_broker():
    from cqrs_celery.conf import get_settings
    from cqrs_celery.replica import queues

    app = get_settings().celery_app()
    queues.declare(app)
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for _ in range(3):
            producer.publish({'x': 1}, routing_key='dead_letter_replica_a', serializer='json')

    found = json.loads(status('--json'))

    depths = {q['queue']: q['messages'] for q in found['queues']}
    assert depths['dead_letter_replica_a'] == 3
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge('dead_letter_replica_a')


def test_without_the_reconciliation_and_unroutable_modules_it_says_never_and_n_a():
    row = by_id(json.loads(status('--json')))['author']

    if 'cqrs_celery.reconcile' not in sys.modules:
        try:
            import cqrs_celery.reconcile  # noqa: F401
        except ImportError:
            assert (row['last_reconciliation'], row['drift_found']) == ('never', 'n/a')
    from cqrs_celery import producer

    if not hasattr(producer, 'unroutable_counts'):
        assert row['unroutable'] == 'n/a'


def test_the_last_reconciliation_and_unroutable_counts_are_shown_when_known(monkeypatch):
    from cqrs_celery import producer

    run = types.SimpleNamespace(started_at=datetime.datetime(2026, 1, 2, 3, 4, 0, tzinfo=datetime.timezone.utc),
                                finished_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                                missing=2, stale=1, ahead=0, changed=3, extra=1, repaired=7, error='')
    module = types.ModuleType('cqrs_celery.reconcile')
    module.last_run = lambda cqrs_id, queue=None: run if cqrs_id == 'author' else None
    monkeypatch.setitem(sys.modules, 'cqrs_celery.reconcile', module)
    monkeypatch.setattr(producer, 'unroutable_counts', lambda: {'author': 4}, raising=False)

    found = by_id(json.loads(status('--json')))

    assert (found['author']['last_reconciliation'], found['author']['drift_found']) == ('2026-01-02T03:04:05+00:00', 7)
    assert found['author']['unroutable'] == 4 and found['item']['unroutable'] == 0
    assert (found['item']['last_reconciliation'], found['item']['drift_found']) == ('never', 'n/a')
    assert '2026-01-02T03:04:05+00:00' in status()


def test_a_run_still_going_or_failed_says_so(monkeypatch):
    run = types.SimpleNamespace(started_at=datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
                                finished_at=None, missing=0, stale=0, ahead=0, changed=0, extra=0,
                                error='master unreachable')
    module = types.ModuleType('cqrs_celery.reconcile')
    module.last_run = lambda cqrs_id, queue=None: run
    monkeypatch.setitem(sys.modules, 'cqrs_celery.reconcile', module)

    row = by_id(json.loads(status('--json')))['author']

    assert row['last_reconciliation'] == '2026-01-02T00:00:00+00:00 (running) (failed: master unreachable)'
    assert row['drift_found'] == 0


def test_dead_letters_are_counted_per_cqrs_id_on_request(letters):
    from cqrs_celery.conf import get_settings
    from cqrs_celery.replica import dead_letters

    app = get_settings().celery_app()
    queue = dead_letters.dead_letter_queue(app)
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for cqrs_id in ('author', 'author', 'item'):
            producer.publish({'envelope': {'cqrs_id': cqrs_id}, 'raw': None, 'error': {}}, exchange=queue.exchange,
                             routing_key=queue.routing_key, serializer='json', declare=[queue])

    found = by_id(json.loads(status('--json', '--dead-letters')))

    assert (found['author']['dead_letters'], found['item']['dead_letters']) == (2, 1)
    assert len(dead_letters.letters(app)) == 3  # put back
    dead_letters.purge(app)


def test_a_recorded_reconciliation_run_is_shown():
    pytest.importorskip('cqrs_celery.reconcile', reason='reconciliation is not in this release')
    from django.apps import apps

    run_model = apps.get_model('cqrs_celery', 'ReconciliationRun')
    finished = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    run_model.objects.create(run_id='r1', side='master', cqrs_id='author', queue='replica_a', finished_at=finished,
                             missing=3, stale=2, extra=1)

    row = by_id(json.loads(status('--json')))['author']

    assert (row['last_reconciliation'], row['drift_found']) == ('2026-03-04T05:06:07+00:00', 6)
    assert by_id(json.loads(status('--json')))['item']['last_reconciliation'] == 'never'


def test_it_says_who_writes_each_models_outbox_events_and_a_trigger_out_of_step(monkeypatch):
    from django.conf import settings
    from django.test import override_settings

    from cqrs_celery.master import triggers

    def writers():
        return {cqrs_id: row['events_written_by'] for cqrs_id, row in by_id(json.loads(status('--json'))).items()}

    without_meta = override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'],
                                                                        'meta_function': None}})
    try:
        # The test settings have a meta_function: Python adds it to every event, and migrate installed no trigger.
        found = writers()
        assert found['item'] == found['author'] == 'python'
        with without_meta:
            assert writers()['item'] == 'python, trigger missing (run migrate)'
            triggers.install('default')
            assert (writers()['item'], writers()['author']) == ('trigger', 'python')  # its own get_cqrs_meta
        # The meta_function is back, the trigger still there: it writes events Python writes too.
        assert writers()['item'] == 'stale trigger (run migrate)'
        assert 'stale trigger (run migrate)' in status()
    finally:
        triggers.install('default')
        triggers.forget()
    monkeypatch.setattr(Item, 'CQRS_PRODUCE', False)
    assert writers()['item'] == 'off'
