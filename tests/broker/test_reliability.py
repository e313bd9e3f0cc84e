"""Retries, dead letters, crashes and broker outages, with real worker and beat processes (tier iii).

Each test runs on RabbitMQ and on Redis; replica services write to their own PostgreSQL databases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from django.conf import settings
from django.db.models import Count
from django.test import override_settings

from cqrs_celery.constants import TASK_NAME
from cqrs_celery.master import outbox
from cqrs_celery.models import OutboxEvent
from tests.broker.compare import describe, in_step
from tests.broker.harness import ROOT, manage, queue_depth, start_all, start_broker, stop_broker, wait_until
from tests.master_app.models import Flaky, Item
from tests.replica_app.faults import attempts
from tests.replica_app.models import AppliedLog, ReplicaFlaky


def applied(alias: str, **filters) -> int:
    return AppliedLog.objects.using(alias).filter(**filters).count()


def dead_letters(services, queue: str, database: str) -> list[dict]:
    output = manage(services.replica_env(queue, database), 'cqrs_dead_letters', 'dump')
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_a_failing_replica_retries_on_its_own_queue_then_dead_letters_retry_and_purge_work(
        services, replica_db, tmp_path):
    queue_a, queue_b = services.queue('replica_a'), services.queue('replica_b')
    start_all(services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_FAULT_DIR=str(tmp_path)),
              services.worker(queue_b, replica_db('replica_b')))

    flaky = Flaky.objects.create(id=1, name='fails three times', fail_times=3)
    (tmp_path / 'always_fail_2').touch()
    broken = Flaky.objects.create(id=2, name='always fails', fail_times=-1)

    wait_until(lambda: ReplicaFlaky.objects.using('replica_a').filter(pk=flaky.pk).exists(), timeout=60,
               message='flaky row applied after its failures')
    assert attempts(tmp_path, flaky.pk, 0) == 4
    assert applied('replica_a', cqrs_id='flaky', pk_value='1', outcome='retrying') == 3
    assert applied('replica_a', cqrs_id='flaky', pk_value='1', outcome='created') == 1

    wait_until(lambda: applied('replica_a', cqrs_id='flaky', pk_value='2', outcome='dead_lettered') == 1,
               timeout=90, message='always-failing row dead-lettered')
    assert applied('replica_a', cqrs_id='flaky', pk_value='2', outcome='retrying') == 5  # CQRS_MAX_RETRIES
    assert not ReplicaFlaky.objects.using('replica_a').filter(pk=broken.pk).exists()
    [letter] = dead_letters(services, queue_a, replica_db('replica_a'))
    assert letter['envelope']['cqrs_id'] == 'flaky' and letter['envelope']['instance_pk'] == 2
    assert letter['error']['type'] == 'PlannedFailure'
    assert letter['error']['attempts'] == 6  # the first try and 5 retries
    assert letter['error']['queue'] == queue_a and letter['error']['host'] and letter['error']['time']
    # dump is not destructive
    assert len(dead_letters(services, queue_a, replica_db('replica_a'))) == 1

    # The other replica service saw each message exactly once, none of A's retries.
    assert applied('replica_b', cqrs_id='flaky') == 2
    assert applied('replica_b', cqrs_id='flaky', outcome='created') == 2

    (tmp_path / 'always_fail_2').unlink()
    output = manage(services.replica_env(queue_a, replica_db('replica_a')), 'cqrs_dead_letters', 'retry')
    assert '1 envelopes sent back' in output
    wait_until(lambda: ReplicaFlaky.objects.using('replica_a').filter(pk=broken.pk).exists(),
               message='dead letter applied after retry')
    assert dead_letters(services, queue_a, replica_db('replica_a')) == []
    assert applied('replica_b', cqrs_id='flaky') == 2

    (tmp_path / 'always_fail_3').touch()
    Flaky.objects.create(id=3, name='fails again', fail_times=-1)
    wait_until(lambda: len(dead_letters(services, queue_a, replica_db('replica_a'))) == 1, timeout=90,
               message='a new dead letter')
    output = manage(services.replica_env(queue_a, replica_db('replica_a')), 'cqrs_dead_letters', 'purge')
    assert '1 dead letters removed' in output
    assert dead_letters(services, queue_a, replica_db('replica_a')) == []


def _raw_task_message(master_app, queue: str, body: bytes, content_type: str) -> None:
    """Publish a Celery task message for the cqrs task with an arbitrary body."""
    headers, properties, _, _ = master_app.amqp.as_task_v2(str(uuid.uuid4()), TASK_NAME, args=[{}])
    with master_app.producer_or_acquire() as producer:
        producer.publish(body, exchange='cqrs.direct', routing_key=queue, headers=headers,
                         content_type=content_type, content_encoding='binary' if content_type.endswith(
                             'serialize') else 'utf-8', delivery_mode=2, **properties)


def test_bad_input_is_dead_lettered_and_the_messages_behind_it_apply(services, replica_db, master_app):
    queue_a = services.queue('replica_a')
    worker = services.worker(queue_a, replica_db('replica_a')).start()
    Item.objects.create(sku='first', name='before the bad input', quantity=1)
    wait_until(lambda: in_step('replica_a', 'item'), message=lambda: describe('replica_a', 'item'))

    good = Item.objects.get(sku='first')
    envelope = {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'item', 'instance_pk': 'bad',
                'instance_data': {'sku': 'bad', 'name': 'x', 'quantity': 1, 'cqrs_revision': 0,
                                  'cqrs_updated': '2026-01-01T00:00:00+00:00'},
                'previous_data': None, 'meta': None, 'correlation_id': None, 'queue': None,
                'expires': None, 'retries': 0}
    send = lambda args, **kw: master_app.send_task(  # noqa: E731
        TASK_NAME, args=args, exchange='cqrs.direct', routing_key=queue_a, **kw)
    _raw_task_message(master_app, queue_a, b'{"this is": not json', 'application/json')
    send([envelope], serializer='pickle')
    send([{**envelope, 'v': 99}], serializer='json')
    send([{key: value for key, value in envelope.items() if key != 'instance_data'}], serializer='json')
    send([{**envelope, 'cqrs_id': 'no_such_model'}], serializer='json')
    send([{**envelope, 'instance_data': {**envelope['instance_data'], 'quantity': 'many'}}], serializer='json')
    send([{**envelope, 'expires': '2000-01-01T00:00:00+00:00'}], serializer='json')

    for i in range(100):
        Item.objects.create(sku=f'good-{i:03d}', name=f'after the bad input {i}', quantity=i)
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, message=lambda: describe('replica_a', 'item'))
    assert good.cqrs_revision == 0 and Item.objects.count() == 101

    letters = wait_until(lambda: (found := dead_letters(services, queue_a, replica_db('replica_a')))
                         and len(found) == 7 and found, timeout=60, message='seven dead letters')
    reasons = sorted(letter['error']['reason'] for letter in letters)
    assert reasons == ['bad input'] * 4 + ['expired', 'not json', 'undecodable']
    messages = ' | '.join(letter['error']['message'] for letter in letters)
    for fragment in ('version 99', 'instance_data', 'no_such_model', 'quantity', 'pickle', 'expired at'):
        assert fragment in messages, (fragment, messages)
    assert worker.alive()


def test_a_replica_worker_killed_at_a_quarter_of_5000_messages_loses_nothing(services, replica_db):
    queue_a = services.queue('replica_a')
    worker = services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_VISIBILITY_TIMEOUT='15').start()
    Item.cqrs.bulk_create([Item(sku=f'k{i:05d}', name=f'item {i}', quantity=i) for i in range(5000)])
    wait_until(lambda: applied('replica_a') >= 1250, timeout=120, message='a quarter applied')
    worker.kill()
    done_at_kill = applied('replica_a')
    assert done_at_kill < 5000
    services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_VISIBILITY_TIMEOUT='15').start()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=300, message=lambda: describe('replica_a', 'item'))


def test_a_worker_group_killed_mid_backlog_with_default_settings_is_whole_again_within_90_seconds(
        services, replica_db):
    # No CQRS_TEST_VISIBILITY_TIMEOUT: the library's defaults, as a user would run it. On Redis the
    # killed worker's unacknowledged messages come back after the visibility timeout (60 s).
    queue_a = services.queue('replica_a')
    worker = services.worker(queue_a, replica_db('replica_a')).start()
    Item.cqrs.bulk_create([Item(sku=f'g{i:05d}', name=f'item {i}', quantity=i) for i in range(3000)])
    wait_until(lambda: applied('replica_a') >= 300, timeout=120, message='a tenth applied')
    worker.kill()
    assert applied('replica_a') < 3000
    services.worker(queue_a, replica_db('replica_a')).start()
    restarted = time.monotonic()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, message=lambda: describe('replica_a', 'item'))
    print(f'whole again {time.monotonic() - restarted:.0f}s after the restart')


def test_the_master_keeps_committing_while_the_broker_is_down_and_the_relay_delivers_everything(
        services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    services.master()
    items = [Item.objects.create(sku=f'o{i:03d}', name='before', quantity=0) for i in range(100)]
    wait_until(lambda: in_step('replica_a', 'item'), message=lambda: describe('replica_a', 'item'))

    stop_broker(services.kind)
    slowest = 0.0
    try:
        changes = 0
        for round_ in range(4):
            for item in items:
                started = time.monotonic()
                item.quantity = round_ + 1
                item.name = f'during the outage {round_}'
                item.save()
                slowest = max(slowest, time.monotonic() - started)
                changes += 1
        for i in range(100):
            Item.objects.create(sku=f'n{i:03d}', name='created during the outage', quantity=i)
            changes += 1
        assert changes == 500
        assert OutboxEvent.objects.count() > 0
    finally:
        start_broker(services.kind)
    print(f'slowest save while the broker was down: {slowest:.2f}s')
    assert slowest < 30, 'a save waited for the broker instead of leaving the event to the outbox'

    wait_until(lambda: in_step('replica_a', 'item'), timeout=240, message=lambda: describe('replica_a', 'item'))
    wait_until(lambda: outbox.pending() == 0, timeout=60, message='outbox drained')
    # Rows are visible as soon as their group commits; the worker logs their outcomes just after.
    wait_until(lambda: applied('replica_a', cqrs_id='item', outcome='created') >= 200, timeout=30,
               message='200 creates logged')
    assert applied('replica_a', cqrs_id='item', outcome='created') == 200


def test_a_master_killed_between_commit_and_publish_is_covered_by_the_relay(services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    result = subprocess.run([sys.executable, '-m', 'tests.broker.crash_master', 'crash-1'], cwd=ROOT,
                            env=services.master_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    assert 'dying before publishing' in result.stdout
    assert Item.objects.filter(sku='crash-1').exists()
    assert OutboxEvent.objects.filter(pk_value='"crash-1"').count() == 1
    assert applied('replica_a') == 0

    services.master()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=60, message=lambda: describe('replica_a', 'item'))
    wait_until(lambda: outbox.pending() == 0, message='outbox drained')


def test_a_script_that_commits_a_burst_and_exits_publishes_it_before_it_goes(services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    script = ("from tests.master_app.models import Item\n"
              "Item.cqrs.bulk_create([Item(sku=f'x{i:05d}', name='burst', quantity=i) for i in range(3000)])\n"
              "for item in Item.objects.filter(quantity__lt=500): item.quantity += 1; item.save()\n")
    result = subprocess.run([sys.executable, '-m', 'django', 'shell', '-c', script], cwd=ROOT,
                            env=services.master_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert outbox.pending() == 0, 'no relay runs here: the script published everything before it exited'
    wait_until(lambda: in_step('replica_a', 'item'), timeout=60, message=lambda: describe('replica_a', 'item'))


def test_two_relays_running_at_once_publish_each_outbox_row_once(services, replica_db, monkeypatch, tmp_path):
    queue_a = services.queue('replica_a')
    assert f'declared queue {queue_a}' in services.declare_topology(queue_a, replica_db('replica_a'))
    relay_only = {**settings.CQRS, 'master': {**settings.CQRS['master'], 'publisher': 'relay'}}
    with override_settings(CQRS=relay_only):  # leave all to the relays
        Item.cqrs.bulk_create([Item(sku=f'r{i:04d}', name='relayed', quantity=i) for i in range(1000)])
    assert outbox.pending() == 1000

    gate = tmp_path / 'go'
    script = ('import pathlib, time\n'
              'from cqrs_celery.master.outbox import relay\n'
              'print("ready", flush=True)\n'
              f'while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.01)\n'
              'print("published", relay(batch=25, min_age=0), flush=True)\n')
    relays = [subprocess.Popen([sys.executable, '-m', 'django', 'shell', '-c', script], cwd=ROOT,
                               env=services.master_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        for relay in relays:  # both are up and waiting at the gate before either starts
            while (line := relay.stdout.readline()) and line.strip() != 'ready':
                pass
            assert line.strip() == 'ready', relay.stderr.read()
        gate.touch()
        outputs = [relay.communicate(timeout=300) for relay in relays]
    finally:
        for relay in relays:  # never leave a relay waiting at the gate
            if relay.poll() is None:
                relay.kill()
                relay.wait()
    counts = [int(out.split('published')[-1]) for out, _ in outputs]
    assert sum(counts) == 1000, outputs
    assert all(count > 0 for count in counts), counts  # they really ran side by side
    assert outbox.pending() == 0
    assert queue_depth(services.broker_url, queue_a) > 0
    services.worker(queue_a, replica_db('replica_a')).start()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=120, message=lambda: describe('replica_a', 'item'))
    wait_until(lambda: applied('replica_a') >= 1000, timeout=60, message='1000 rows handled')
    assert applied('replica_a', cqrs_id='item', outcome='created') == 1000
    assert applied('replica_a') == 1000, 'a row published by both relays would be handled twice'


def test_a_master_killed_while_its_publisher_thread_sends_batches_loses_nothing_and_applies_nothing_twice(
        services, replica_db):
    # A master process saving flat out (creates, and updates of rows it made): its publisher thread
    # is sending gathered batches all the time, so the SIGKILL lands in the middle of one (events
    # published but not yet deleted from the outbox, events read but not yet sent, events not read).
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    script = ('from tests.master_app.models import Item\n'
              'items = []\n'
              'for i in range(1_000_000):\n'
              '    items.append(Item.objects.create(sku=f"p{i:07d}", name="new", quantity=0))\n'
              '    old = items[i // 2]\n'
              '    old.quantity += 1\n'
              '    old.name = f"update {i}"\n'
              '    old.save()\n')
    writer = subprocess.Popen([sys.executable, '-m', 'django', 'shell', '-c', script], cwd=ROOT,
                              env=services.master_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        wait_until(lambda: applied('replica_a') >= 500 or writer.poll() is not None, timeout=120,
                   message='500 rows applied while the master writes')
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ''
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -9
    made = Item.objects.count()
    print(f'killed after {made} creates; {outbox.pending()} events left in the outbox')

    services.master()  # the relay publishes what the killed process left
    wait_until(lambda: in_step('replica_a', 'item'), timeout=120, message=lambda: describe('replica_a', 'item'))
    wait_until(lambda: outbox.pending() == 0, timeout=60, message='outbox drained')
    # Re-sent rows (published before the kill, still in the outbox) are duplicates, never applied twice.
    twice = (AppliedLog.objects.using('replica_a').filter(outcome__in=['created', 'updated'])
             .values('pk_value', 'revision').annotate(times=Count('id')).filter(times__gt=1))
    assert not list(twice[:5])


def test_rows_failing_inside_a_batch_retry_or_dead_letter_alone_while_the_rest_apply_once(
        services, replica_db, tmp_path):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_FAULT_DIR=str(tmp_path)).start()
    (tmp_path / 'always_fail_13').touch()
    # One batch message of 20 rows: row 7 fails twice, row 13 always.
    Flaky.cqrs.bulk_create([Flaky(id=i, name=f'batch row {i}', fail_times={7: 2, 13: -1}.get(i, 0))
                            for i in range(1, 21)])
    wait_until(lambda: applied('replica_a', cqrs_id='flaky', pk_value='13', outcome='dead_lettered') == 1,
               timeout=90, message='row 13 dead-lettered')
    wait_until(lambda: ReplicaFlaky.objects.using('replica_a').count() == 19, message='every other row applied')
    assert not ReplicaFlaky.objects.using('replica_a').filter(pk=13).exists()
    assert attempts(tmp_path, 7, 0) == 3  # two failures, then applied
    for pk in range(1, 21):
        if pk != 13:
            assert applied('replica_a', cqrs_id='flaky', pk_value=str(pk), outcome='created') == 1, pk
        if pk not in (7, 13):  # the rows that did not fail were applied once, never retried
            assert applied('replica_a', cqrs_id='flaky', pk_value=str(pk)) == 1, pk
    [letter] = dead_letters(services, queue_a, replica_db('replica_a'))
    assert letter['envelope']['instance_pk'] == 13 and letter['error']['type'] == 'PlannedFailure'
