"""Reconciliation (tier i): digests, bucketing, the diff, repairs and the command, both sides in-process."""

from __future__ import annotations

import datetime
import decimal
import uuid
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from cqrs_celery import reconcile
from cqrs_celery.constants import RECONCILE_TASK
from cqrs_celery.models import MasterTombstone, ReconciliationRun
from cqrs_celery.reconcile import digest, tables, tasks
from cqrs_celery.signals import reconciled
from cqrs_celery.testing import apply_in_process, capture_envelopes
from tests.master_app.models import Author, Book, Item, Renamed
from tests.replica_app.models import ReplicaAuthor, ReplicaBook, ReplicaItem, ReplicaRenamed

pytestmark = pytest.mark.django_db(transaction=True)


def with_master(**values):
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'], **values}})


@pytest.fixture(autouse=True)
def _no_grace():
    """Rows seeded a moment ago are repaired at once (no grace for changes in flight)."""
    with with_master(reconcile_grace=0):
        yield


# --- digests -------------------------------------------------------------------------------------

@pytest.mark.parametrize(('kind', 'a', 'b'), [
    ('decimal', '1.5000', decimal.Decimal('1.5')),
    ('decimal', '100', '1E+2'),
    ('datetime', '2026-11-28T17:00:00+01:00', '2026-11-28T16:00:00+00:00'),
    ('datetime', '2026-11-28T16:00:00', datetime.datetime(2026, 11, 28, 16, tzinfo=datetime.timezone.utc)),
    ('uuid', '12345678-1234-5678-1234-567812345678', uuid.UUID('12345678123456781234567812345678')),
    ('json', {'b': 1, 'a': [1, 2]}, {'a': [1, 2], 'b': 1}),
    ('int', '7', 7),
    ('duration', 'P1DT00H00M01S', datetime.timedelta(days=1, seconds=1)),
    ('bytes', 'AAE=', b'\x00\x01'),
    ('bool', True, 'true'),
])
def test_values_both_sides_store_alike_have_one_canonical_text(kind, a, b):
    assert digest.canonical(kind, a) == digest.canonical(kind, b)


@pytest.mark.parametrize(('kind', 'a', 'b'), [
    ('decimal', '1.5', '1.51'),
    ('str', 'Dune', 'dune'),
    ('int', 1, None),
    ('float', 0.1, 0.2),
    ('json', {'a': 1}, {'a': '1'}),
])
def test_different_values_have_different_canonical_texts(kind, a, b):
    assert digest.canonical(kind, a) != digest.canonical(kind, b)


@pytest.mark.parametrize(('rows', 'buckets'), [(0, 1), (31, 1), (32, 2), (1000, 32), (10_000, 512),
                                               (1_000_000, 32768)])
def test_buckets_are_a_power_of_two_holding_16_to_32_rows_each(rows, buckets):
    assert digest.bucket_count(rows) == buckets


def test_bucket_sums_add_up_to_the_table_digest_whatever_the_bucket_count():
    keys = [f'sku-{i}' for i in range(500)]
    summaries = [digest.Summary(count) for count in (1, 16, 64)]
    for summary in summaries:
        for key in reversed(keys):
            summary.add(key, digest.row_digest(key, 3, 'c'))
    assert len({s.digest for s in summaries}) == 1
    assert sum(summaries[1].sums) % digest.MODULUS == summaries[1].total
    assert digest.decode_sums(digest.encode_sums(summaries[2].sums), 64) == summaries[2].sums


def test_one_changed_row_changes_exactly_its_bucket():
    before, after = digest.Summary(64), digest.Summary(64)
    for i in range(1000):
        key = f'k{i}'
        before.add(key, digest.row_digest(key, 1))
        after.add(key, digest.row_digest(key, 2 if i == 500 else 1))
    assert digest.differing(before.sums, after.sums) == [digest.bucket_of('k500', 64)]


# --- which models and fields ----------------------------------------------------------------------

def test_models_with_their_own_methods_compare_revisions_only_and_plain_ones_their_fields():
    assert tables.mode(ReplicaItem) == tables.CONTENT
    assert tables.mode(ReplicaAuthor) == tables.REVISION  # its own cqrs_create / cqrs_update
    assert tables.mode(ReplicaBook) == tables.REVISION


def test_a_mapping_is_inverted_to_the_master_keys_the_fields_come_from():
    assert tables.field_kinds(ReplicaRenamed) == {'name': 'str', 'cqrs_updated': 'datetime'}
    assert tables.field_kinds(ReplicaItem) == {'name': 'str', 'quantity': 'int', 'cqrs_updated': 'datetime'}


# --- the whole protocol in one process -----------------------------------------------------------

def seed(count):
    with apply_in_process():
        Item.cqrs.bulk_create([Item(sku=f'sku-{i:04d}', name=f'item {i}', quantity=i) for i in range(count)])


def drift():
    """Every kind of drift, behind the library's back."""
    replica = ReplicaItem.objects
    replica.filter(sku__in=['sku-0001', 'sku-0002']).delete()                        # missing
    replica.filter(sku='sku-0003').update(name='edited by hand')                      # changed
    replica.filter(sku='sku-0004').update(cqrs_revision=-1)                           # stale
    Item.objects.filter(sku='sku-0005').update(cqrs_revision=5, name='newer')         # stale (master moved)
    replica.create(sku='only-here', name='x', quantity=0, cqrs_revision=4,
                   cqrs_updated=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))  # extra
    Item.objects.filter(sku='sku-0006')._raw_delete('default')                       # extra (deleted on master)
    replica.filter(sku='sku-0007').update(cqrs_revision=9)                            # ahead


def same_tables():
    master = {i.sku: (i.name, i.quantity, i.cqrs_revision, i.cqrs_updated) for i in Item.objects.all()}
    replica = {i.sku: (i.name, i.quantity, i.cqrs_revision, i.cqrs_updated) for i in ReplicaItem.objects.all()}
    return master == replica


def run(**kwargs):
    with reconcile.run_in_process() as messages, apply_in_process():
        runs = reconcile.start('item', manual=True, **kwargs)
    return ReconciliationRun.objects.get(run_id=runs[0], side='master'), messages


def test_an_in_sync_table_costs_three_small_messages():
    seed(300)
    done, messages = run(content=True)

    assert done.drift == 0 and done.repaired == 0 and done.finished_at is not None
    assert [body['step'] for _, body in messages] == ['summary', 'report']  # + beat's start
    assert done.messages == 3 and done.bytes < 1000


def test_every_kind_of_drift_is_found_and_repaired_field_for_field():
    seed(300)
    drift()
    done, messages = run(content=True)

    assert (done.missing, done.changed, done.stale, done.extra, done.ahead) == (2, 1, 2, 2, 1)
    assert done.repaired == 8
    assert same_tables()
    assert not ReplicaItem.objects.filter(sku='only-here').exists()
    # the deleted pks are remembered on the master: a row inserted with one continues above
    assert MasterTombstone.objects.get(cqrs_id='item', pk_value='only-here').revision == 4
    replica_run = ReconciliationRun.objects.get(run_id=done.run_id, side='replica')
    assert (replica_run.missing, replica_run.repaired) == (2, 8)
    assert [body['step'] for _, body in messages][:4] == ['summary', 'buckets', 'rows', 'report']


def test_without_content_a_field_changed_at_an_equal_revision_is_left_for_the_content_run():
    seed(100)
    ReplicaItem.objects.filter(sku='sku-0003').update(name='edited by hand')
    done, _ = run(content=False)
    assert done.drift == 0
    done, _ = run(content=True)
    assert done.changed == 1 and same_tables()


def test_a_dry_run_reports_the_drift_with_pks_and_repairs_nothing():
    seed(100)
    drift()
    with capture_envelopes() as sent:
        done, _ = run(content=True, dry_run=True)
    assert sent == [] and done.repaired == 0
    assert done.details['missing'] == ['sku-0001', 'sku-0002'] or sorted(done.details['missing']) == [
        'sku-0001', 'sku-0002']
    assert not same_tables()


def test_a_row_that_still_differs_after_its_repair_is_not_sent_again_every_run(caplog, monkeypatch):
    from cqrs_celery.reconcile import master_side

    monkeypatch.setattr(master_side, 'LOOP_AFTER', 0)  # (a minute after its repair, in production)
    seed(50)
    ReplicaItem.objects.filter(sku='sku-0003').update(name='edited by hand')
    with capture_envelopes(), reconcile.run_in_process():  # the repair is lost: the replica keeps differing
        first = ReconciliationRun.objects.get(run_id=reconcile.start('item', content=True, manual=True)[0],
                                              side='master')
    assert first.repaired == 1
    for _ in range(2):
        with reconcile.run_in_process():  # a revision-only run in between changes nothing
            reconcile.start('item', manual=True)
        with capture_envelopes() as sent, reconcile.run_in_process():
            again = ReconciliationRun.objects.get(
                run_id=reconcile.start('item', content=True, manual=True)[0], side='master')
        assert sent == [] and (again.changed, again.held_back, again.repaired) == (1, 1, 0)
    assert caplog.text.count('still differs after its repair') == 1


@with_master(reconcile_min_interval=60)
def test_runs_closer_than_the_minimum_interval_are_ignored_unless_started_by_hand():
    seed(10)
    with reconcile.run_in_process():
        reconcile.start('item')
        reconcile.start('item')
    assert ReconciliationRun.objects.filter(side='master').count() == 1
    with reconcile.run_in_process():
        reconcile.start('item', manual=True)
    assert ReconciliationRun.objects.filter(side='master').count() == 2


def test_a_renamed_primary_key_and_a_revision_only_model_are_repaired():
    with apply_in_process():
        for number in range(40):
            Renamed.objects.create(number=number, name=f'n{number}')
        author = Author.objects.create(name='Ann')
        Book.objects.create(title='Dune', price=decimal.Decimal('1.5'), author=author)
    ReplicaRenamed.objects.filter(remote_id=7).delete()
    ReplicaRenamed.objects.create(remote_id=99, title='extra', cqrs_revision=0,
                                  cqrs_updated=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    ReplicaBook.objects.update(cqrs_revision=-1)
    with reconcile.run_in_process(), apply_in_process():
        reconcile.start(manual=True, content=True)
    assert sorted(ReplicaRenamed.objects.values_list('remote_id', flat=True)) == list(range(40))
    assert ReplicaBook.objects.get().cqrs_revision == 0


def test_the_reconciled_signal_and_last_run_tell_the_outcome():
    seed(20)
    ReplicaItem.objects.filter(sku='sku-0001').delete()
    seen = []

    def receiver(**kwargs):
        seen.append((kwargs['side'], kwargs['cqrs_id'], kwargs['queue'], kwargs['drift']['missing']))

    reconciled.connect(receiver)
    try:
        done, _ = run()
    finally:
        reconciled.disconnect(receiver)
    assert seen == [('master', 'item', 'replica_a', 1), ('replica', 'item', 'replica_a', 1)]
    assert reconcile.last_run('item').run_id == done.run_id
    assert reconcile.last_run('item', 'replica_b') is None


@pytest.mark.parametrize('body', [
    None, [], {'step': 'rows'}, {'step': 'summary', 'run': 'r', 'cqrs_id': 'item', 'queue': 'q', 'fields': {},
                                   'count': -1, 'digest': 'x'},
    {'step': 'buckets', 'run': 'r', 'cqrs_id': 'item', 'fields': {}, 'buckets': 3, 'sums': ''},
    {'step': 'start', 'content': 'yes'},
])
def test_a_malformed_step_is_dropped_with_a_log_line(body, caplog):
    assert tasks.handle(body, tasks.REPLICA_STEPS) == 'dropped'
    assert 'cqrs reconcile' in caplog.text


def test_an_unknown_cqrs_id_fails_the_step_without_raising():
    assert tasks.handle({'step': 'start', 'cqrs_id': 'nope'}, tasks.REPLICA_STEPS) == 'failed'


# --- the command ----------------------------------------------------------------------------------

def command(*args):
    out = StringIO()
    call_command('cqrs_reconcile', *args, stdout=out)
    return out.getvalue()


def test_the_command_prints_the_drift_by_kind_with_pks_in_a_dry_run():
    seed(60)
    ReplicaItem.objects.filter(sku='sku-0001').delete()
    ReplicaItem.objects.filter(sku='sku-0002').update(name='hand')
    with reconcile.run_in_process(), capture_envelopes() as sent:
        output = command('--cqrs-id', 'item', '--dry-run', '--content')
    assert sent == []
    assert 'missing: 1 (sku-0001)' in output
    assert 'changed: 1 (sku-0002)' in output
    assert 'nothing repaired (dry run)' in output


def test_the_command_repairs_and_says_what_it_did():
    seed(60)
    ReplicaItem.objects.filter(sku='sku-0001').delete()
    with reconcile.run_in_process(), apply_in_process():
        output = command('--cqrs-id', 'item')
    assert 'missing: 1 (sku-0001)' in output and '1 rows repaired' in output
    assert same_tables()


def test_the_command_explains_what_to_do_when_it_cannot_run():
    with pytest.raises(CommandError, match='no replica model'):
        command('--cqrs-id', 'nope')
    with override_settings(CQRS={**settings.CQRS, 'queue': None}), pytest.raises(CommandError, match='--queue'):
        command('--cqrs-id', 'item')


def test_the_beat_entry_starts_on_the_replica_queue_through_the_direct_exchange():
    from cqrs_celery.beat import beat_schedule

    schedule = beat_schedule(reconcile_queue='replica_a', reconcile_every=60, content_every=600)
    entry = schedule['cqrs-reconcile']
    assert entry['task'] == RECONCILE_TASK and entry['schedule'] == 60
    assert entry['options'] == {'exchange': 'cqrs.direct', 'routing_key': 'replica_a', 'declare': []}
    assert schedule['cqrs-reconcile-content']['args'] == [{'step': 'start', 'content': True}]
    assert 'cqrs-reconcile' not in beat_schedule()


def test_every_field_type_replicated_as_it_is_shows_no_drift_and_a_changed_value_does():
    from django.db import connection

    from tests.master_app.models import AllFields
    from tests.replica_app.models import ReplicaAllFields
    from tests.test_field_types import VALUES, full_row_values

    # (SQLite rounds long decimals so that Django cannot read some back even on the master)
    sqlite = connection.vendor == 'sqlite'
    with apply_in_process():
        author = Author.objects.create(name='Ann')
        rows = [AllFields.objects.create(**{field: value}) for field, value in VALUES
                if not (sqlite and field == 'decimal')]
        rows.append(AllFields.objects.create(**{**full_row_values(author), 'decimal': decimal.Decimal('2.25')}))
    with reconcile.run_in_process(), apply_in_process():
        clean = ReconciliationRun.objects.get(run_id=reconcile.start('all_fields', content=True, manual=True)[0],
                                              side='master')
    assert clean.drift == 0

    ReplicaAllFields.objects.filter(pk=rows[-1].pk).update(decimal=decimal.Decimal('1.5'))
    ReplicaAllFields.objects.filter(pk=rows[0].pk).update(document={'edited': True})
    with reconcile.run_in_process(), apply_in_process():
        fixed = ReconciliationRun.objects.get(run_id=reconcile.start('all_fields', content=True, manual=True)[0],
                                              side='master')
    assert fixed.changed == 2 and fixed.repaired == 2
    assert ReplicaAllFields.objects.get(pk=rows[-1].pk).decimal == rows[-1].decimal


# --- the replica queue's gate ---------------------------------------------------------------------

def task_message(task, args, kwargs=None, **headers):
    import json
    from types import SimpleNamespace

    body = json.dumps([args, kwargs or {}, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}])
    return SimpleNamespace(headers={'task': task, 'id': str(uuid.uuid4()), 'retries': 0, **headers},
                           content_type='application/json', content_encoding='utf-8', body=body.encode(),
                           delivery_info={'exchange': 'cqrs.direct', 'routing_key': 'replica_a'})


def test_the_replica_queue_admits_a_reconciliation_step_next_to_envelopes():
    from cqrs_celery.replica import guard

    assert guard.check(task_message(RECONCILE_TASK, [{'step': 'start', 'content': False}])) is None


@pytest.mark.parametrize(('args', 'kwargs', 'headers', 'reason'), [
    (['start'], None, {}, 'must be an object'),
    ([{'step': 'start'}, 2], None, {}, 'exactly one positional argument, a reconciliation step'),
    ([{'step': 'start'}], {'x': 1}, {}, 'no keyword arguments'),
    ([{'step': 'start'}], None, {'link': [{'task': 'x'}]}, 'not allowed on cqrs_celery.reconcile'),
    ([{'step': 'start'}], None, {'expires': '2030-01-01T00:00:00'}, 'header expires'),
])
def test_a_mis_shaped_reconciliation_message_is_refused_by_the_gate(args, kwargs, headers, reason):
    from cqrs_celery.replica import guard

    refusal = guard.check(task_message(RECONCILE_TASK, args, kwargs, **headers))
    assert refusal is not None and reason in refusal.message


def test_the_master_side_task_does_not_belong_on_a_replica_queue():
    from cqrs_celery.constants import RECONCILE_MASTER_TASK
    from cqrs_celery.replica import guard

    refusal = guard.check(task_message(RECONCILE_MASTER_TASK, [{'step': 'rows'}]))
    assert refusal is not None and 'does not belong on a replica queue' in refusal.message


def test_runs_older_than_the_retention_are_removed_by_the_clean_up():
    from cqrs_celery.beat import RUN_RETENTION, clean_tombstones

    old = ReconciliationRun.objects.create(run_id='old', side='master', cqrs_id='item', queue='q',
                                           started_at=datetime.datetime.now(datetime.timezone.utc)
                                           - datetime.timedelta(seconds=RUN_RETENTION + 60))
    recent = ReconciliationRun.objects.create(run_id='new', side='master', cqrs_id='item', queue='q')
    clean_tombstones()
    assert not ReconciliationRun.objects.filter(pk=old.pk).exists()
    assert ReconciliationRun.objects.filter(pk=recent.pk).exists()


def test_rows_changed_on_the_master_moments_ago_are_left_to_their_own_messages():
    seed(30)
    ReplicaItem.objects.filter(sku='sku-0001').delete()        # drift, but the row changed just now
    with capture_envelopes():
        Item.objects.filter(sku='sku-0002').delete()            # its DELETE is on its way
    with with_master(reconcile_grace=60), capture_envelopes() as sent:
        done, _ = run()
    assert (done.missing, done.extra, done.in_flight, done.repaired) == (1, 1, 2, 0)
    assert sent == []
