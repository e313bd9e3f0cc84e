"""The diff pipes of django-cqrs, same format: cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync, and
cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica (tier i, one process
plays master and replica)."""

from io import StringIO

import pytest
import ujson
from django.core.management import CommandError, call_command
from django.utils import timezone

from cqrs_celery import SignalType
from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.testing import apply_in_process, capture_envelopes
from tests.master_app.models import AllFields, Author, Item, LongKey, Renamed
from tests.replica_app.models import ReplicaAllFields, ReplicaAuthor, ReplicaItem, ReplicaLongKey, ReplicaRenamed

pytestmark = pytest.mark.django_db(transaction=True)


def run(name, *args, stdin=None):
    out = StringIO()
    extra = {'stdin': StringIO(stdin)} if stdin is not None else {}
    call_command(name, *args, stdout=out, stderr=StringIO(), **extra)
    return out.getvalue()


def pipe(*commands):
    """Run commands as a shell pipe does: each one's stdout is the next one's stdin."""
    text = None
    for name, *args in commands:
        text = run(name, *args, stdin=text)
    return text


def drift_items():
    """Five items replicated, then drifted behind the library's back."""
    with apply_in_process():
        items = {sku: Item.objects.create(sku=sku, name=sku, quantity=1) for sku in ('a', 'b', 'c', 'd', 'e')}
        items['b'].quantity = 2
        items['b'].save()
    ReplicaItem.objects.filter(sku='a').delete()  # missing on the replica
    ReplicaItem.objects.filter(sku='b').update(cqrs_revision=0, name='old')  # older revision
    ReplicaItem.objects.filter(sku='c').update(cqrs_revision=9, name='ahead')  # ahead of its master
    return items


def test_the_master_diff_is_a_header_then_pk_revision_pairs_per_batch():
    with capture_envelopes():
        items = [Item.objects.create(sku=f's{i}', name='n') for i in range(5)]
    items[0].save()

    first, *lines = run('cqrs_diff_master', '--cqrs-id', 'item', '--batch', '2').splitlines()

    assert first.split(',')[0] == 'item' and timezone.datetime.fromisoformat(first.split(',', 1)[1])
    assert [ujson.loads(line) for line in lines] == [[['s0', 1], ['s1', 0]], [['s2', 0], ['s3', 0]], [['s4', 0]]]


def test_the_replica_diff_lists_missing_older_and_newer_rows_and_adds_its_queue():
    drift_items()

    first, *lines = pipe(('cqrs_diff_master', '--cqrs-id', 'item'), ('cqrs_diff_replica',)).splitlines()

    assert first.startswith('item,') and first.endswith(',replica_a')
    assert sorted(sum((ujson.loads(line) for line in lines), [])) == ['a', 'b', 'c']


def test_the_diff_pipe_repairs_the_replica_with_forced_syncs_to_its_queue_only():
    items = drift_items()

    with capture_envelopes() as sent:
        pipe(('cqrs_diff_master', '--cqrs-id', 'item'), ('cqrs_diff_replica',), ('cqrs_diff_sync',))
    assert sorted(e.instance_pk for e in sent) == ['a', 'b', 'c']
    assert {(e.signal_type, e.queue, e.forced) for e in sent} == {(SignalType.SYNC, 'replica_a', True)}

    with apply_in_process():
        pipe(('cqrs_diff_master', '--cqrs-id', 'item'), ('cqrs_diff_replica',), ('cqrs_diff_sync',))
    for sku, item in items.items():
        replica = ReplicaItem.objects.get(sku=sku)
        assert (replica.name, replica.quantity, replica.cqrs_revision) == (item.name, item.quantity, item.cqrs_revision)
    assert pipe(('cqrs_diff_master', '--cqrs-id', 'item'), ('cqrs_diff_replica',)).count('\n') == 1  # in sync


@pytest.mark.parametrize(('master', 'replica', 'make', 'drift'), [
    (LongKey, ReplicaLongKey, lambda i: LongKey.objects.create(key=f'{i}-' + 'k' * 300, value=i),
     lambda: ReplicaLongKey.objects.update(value=-1, cqrs_revision=-1)),
    (Renamed, ReplicaRenamed, lambda i: Renamed.objects.create(number=i, name=f'n{i}'),
     lambda: ReplicaRenamed.objects.update(title='x', cqrs_revision=-1)),
    (AllFields, ReplicaAllFields, lambda i: AllFields.objects.create(big=i),
     lambda: ReplicaAllFields.objects.update(big=-1, cqrs_revision=-1)),
], ids=['text-pk', 'renamed-pk', 'uuid-pk'])
def test_the_pipe_works_for_any_primary_key(master, replica, make, drift):
    with apply_in_process():
        rows = [make(i) for i in range(3)]
    drift()

    with apply_in_process():
        pipe(('cqrs_diff_master', '--cqrs-id', master.CQRS_ID), ('cqrs_diff_replica',), ('cqrs_diff_sync',))

    assert sorted(replica.objects.values_list('cqrs_revision', flat=True)) == [0, 0, 0]
    assert replica.objects.count() == len(rows)


def test_a_filter_limits_the_master_diff():
    with capture_envelopes():
        for i in range(4):
            Item.objects.create(sku=f's{i}', name='n', quantity=i)

    lines = run('cqrs_diff_master', '--cqrs-id', 'item', '--filter', '{"quantity__gte": 2}').splitlines()

    assert ujson.loads(lines[1]) == [['s2', 0], ['s3', 0]]


def test_diff_sync_without_a_queue_in_the_header_sends_unforced_syncs_to_every_replica():
    with capture_envelopes():
        Item.objects.create(sku='a', name='n')

    with capture_envelopes() as sent:
        run('cqrs_diff_sync', stdin='item,2020-01-01 00:00:00+00:00,None\n["a"]\n')

    assert [(e.instance_pk, e.queue, e.forced) for e in sent] == [('a', None, False)]


def test_the_deleted_pipe_deletes_on_the_replica_what_the_master_no_longer_has():
    with apply_in_process():
        authors = [Author.objects.create(name=f'a{i}') for i in range(4)]
    with capture_envelopes():  # deleted on the master, the DELETE never reaches the replica
        gone = [authors[1].pk, authors[3].pk]
        Author.objects.filter(pk__in=gone).delete()

    listed = pipe(('cqrs_deleted_diff_replica', '--cqrs-id', 'author', '--batch', '3'),
                  ('cqrs_deleted_diff_master',))
    assert sorted(sum((ujson.loads(line) for line in listed.splitlines()[1:]), [])) == gone

    report = run('cqrs_deleted_sync_replica', stdin=listed)

    assert '2 deleted' in report
    assert sorted(ReplicaAuthor.objects.values_list('pk', flat=True)) == [authors[0].pk, authors[2].pk]
    # a tombstone at the replica's revision keeps a late copy of the old row from coming back
    assert ReplicaTombstone.objects.filter(cqrs_id='author').count() == 2


def test_the_deleted_pipe_works_for_a_renamed_text_primary_key():
    with apply_in_process():
        Renamed.objects.create(number=1, name='kept')
        Renamed.objects.create(number=2, name='gone')
    with capture_envelopes():
        Renamed.objects.filter(number=2).delete()

    pipe(('cqrs_deleted_diff_replica', '--cqrs-id', 'renamed'), ('cqrs_deleted_diff_master',),
         ('cqrs_deleted_sync_replica',))

    assert list(ReplicaRenamed.objects.values_list('pk', flat=True)) == [1]


def test_deleted_sync_leaves_a_row_that_changed_since_the_diff():
    now = timezone.now()
    ReplicaItem.objects.create(sku='x', name='n', quantity=0, cqrs_revision=1, cqrs_updated=now)
    listed = pipe(('cqrs_deleted_diff_replica', '--cqrs-id', 'item'), ('cqrs_deleted_diff_master',))
    assert ujson.loads(listed.splitlines()[1]) == ['x']

    dry = run('cqrs_deleted_sync_replica', '--dry-run', stdin=listed)
    assert '1 would be deleted' in dry and ReplicaItem.objects.filter(sku='x').exists()
    run('cqrs_deleted_sync_replica', stdin=listed)
    assert not ReplicaItem.objects.filter(sku='x').exists()


@pytest.mark.parametrize(('name', 'stdin', 'message'), [
    ('cqrs_diff_replica', '', 'no input'),
    ('cqrs_diff_replica', 'nope,2020\n', "No replica model has CQRS_ID 'nope'"),
    ('cqrs_diff_replica', 'item,2020\nnot json\n', 'line 2 is not JSON'),
    ('cqrs_diff_replica', 'manual_note,2020\n', 'keeps no table'),
    ('cqrs_diff_replica', 'item,2020\n["a", "b"]\n', r'\[\[pk, revision\]'),
    ('cqrs_diff_sync', 'nope,2020,q\n', "No master model has CQRS_ID 'nope'"),
    ('cqrs_deleted_diff_master', 'item,2020\n{"a": 1}\n', 'not a JSON array'),
    ('cqrs_deleted_sync_replica', 'all_fields,2020\n["not-a-uuid"]\n', 'is not a primary key'),
])
def test_bad_pipe_input_fails_with_a_command_error_that_says_why(name, stdin, message):
    with pytest.raises(CommandError, match=message):
        run(name, stdin=stdin)


@pytest.mark.parametrize('args', [
    ['cqrs_diff_master', '--cqrs-id', 'nope'],
    ['cqrs_deleted_diff_replica', '--cqrs-id', 'nope'],
    ['cqrs_diff_master', '--cqrs-id', 'item', '--batch', '0'],
    ['cqrs_deleted_diff_replica', '--cqrs-id', 'item', '--filter', '[]'],
])
def test_bad_arguments_fail_with_a_command_error(args):
    with pytest.raises(CommandError):
        run(*args)
