"""The scenarios, run for one library in one section (broker × database) of the benchmark.

Every wait polls with a deadline: a scenario that does not finish in time is recorded as timed out
with how far it got, and the run goes on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from benchlib.processes import (
    CQRS_CELERY,
    DJCQRS,
    Library,
    Service,
    StepFailed,
    Worker,
    compile_sources,
    has_sync_command,
    stop_background,
)
from benchlib.report import PLAIN_LOOP, QUIET_LOOP
from benchlib.services import MASTER_TABLE, Broker, Database, wait_for

CQRS_ID = 'bench_item'
DJCQRS_EXCHANGE = 'bench_djcqrs'
_queue_numbers = itertools.count(1)


class Recorder:
    """Collects one value (or a failure) per metric and run; the report aggregates them."""

    def __init__(self, section: dict, log: Callable[[str], None]) -> None:
        self.section = section
        self.records: list[dict] = []
        self.log = log

    def add(self, scenario: str, metric: str, variant: str, value: float | None, unit: str,
            concurrency: int | None = None, note: str = '') -> None:
        self.records.append({**self.section, 'concurrency': concurrency, 'scenario': scenario, 'metric': metric,
                             'variant': variant, 'value': value, 'unit': unit, 'note': note})


def deadline_for(count: int) -> float:
    """Seconds a step of ``count`` events may take: a rate under 20 events/s counts as timed out."""
    return 30 + count / 20


class Section:
    """One library on one broker and one database kind: its two databases and its services."""

    def __init__(self, library: Library, broker: Broker, db_kind: str) -> None:
        self.library = library
        self.broker = broker
        self.master_db = Database(db_kind, f'{library.short}_master')
        self.replica_db = Database(db_kind, f'{library.short}_replica')

    def services(self, queue: str, outbox: bool = True, broker_url: str | None = None,
                 publisher: str = '') -> tuple[Service, Service]:
        url = broker_url or self.broker.url
        return (Service(self.library, 'master', self.master_db, url, queue, outbox, publisher),
                Service(self.library, 'replica', self.replica_db, url, queue))

    def prepare(self) -> None:
        """Fresh databases, migrated, with the visibility trigger on the replica table."""
        master, replica = self.services('bench_setup')
        for database, service in ((self.master_db, master), (self.replica_db, replica)):
            database.recreate()
            service.manage('migrate', '--run-syncdb', '-v0')
        self.replica_db.install_stamp()

    def drop(self) -> None:
        self.master_db.drop()
        self.replica_db.drop()

    def new_queue(self) -> str:
        return f'bench_{self.library.short}_{os.getpid()}_{next(_queue_numbers)}'

    def declare(self, replica: Service) -> None:
        """The replica's queue, before the master publishes anything."""
        if self.library is CQRS_CELERY:
            replica.manage('cqrs_topology', '--declare', timeout=60)
        else:
            keys = [CQRS_ID, f'cqrs.{replica.queue}.{CQRS_ID}']
            self.broker.declare_topic_queue(DJCQRS_EXCHANGE, replica.queue, keys)

    def clean(self, queue: str) -> None:
        self.broker.clean([queue, f'dead_letter_{queue}'], [])

    def clean_exchanges(self) -> None:
        self.broker.clean([], [f'cqrs.{CQRS_ID}', DJCQRS_EXCHANGE])

    def empty(self) -> None:
        self.master_db.empty()
        self.replica_db.empty()

    def warm_up(self, master: Service, worker: Worker) -> None:
        """A few replicated rows so the worker is connected and warm; then both databases emptied."""
        count = 2 * worker.concurrency
        master.driver('create', str(count), '--start', '90000000')
        _, ok = wait_for(lambda: self.replica_db.progress()[0], lambda c: c >= count or not worker.alive(), 90)
        if not ok or not worker.alive():
            raise StepFailed(f'{self.library} worker did not start:\n{worker.log_tail()}')
        self.empty()

    def wait_rows(self, count: int, min_revision: int = 0, deadline: float | None = None):
        """Wait until the replica has ``count`` rows at ``min_revision``; returns ((count, first, last), ok)."""
        return wait_for(lambda: self.replica_db.progress(min_revision), lambda p: p[0] >= count,
                        deadline or deadline_for(count))


def cqrs_celery_section(broker: str, db_kind: str) -> tuple[Section, str, Service, Service]:
    """cqrs_celery's section on ``broker`` and ``db_kind`` for the single-library scripts
    (``save_loop_split.py``, ``flood_tail.py``): sources compiled, databases made, a new replica
    queue declared. Returns the section, the queue, and the master and replica services."""
    compile_sources()
    section = Section(CQRS_CELERY, Broker(broker), db_kind)
    queue = section.new_queue()
    section.prepare()
    master, replica = section.services(queue)
    section.declare(replica)
    return section, queue, master, replica


def run_replication(section: Section, rec: Recorder, concurrency: int, n: int, latency_rows: int,
                    scenarios: set[str], sync_rows: int = 0) -> None:
    """Scenarios A, B, C, D and E of one run, with a worker of ``concurrency`` processes."""
    lib, c = section.library.name, concurrency
    queue = section.new_queue()
    master, replica = section.services(queue)
    worker = Worker(replica, c)
    try:
        section.empty()
        section.declare(replica)
        if scenarios & {'A', 'B', 'C', 'E'}:
            worker.start()
            section.warm_up(master, worker)
            _rows_scenarios(section, rec, master, worker, c, n, latency_rows, scenarios, sync_rows)
            if 'A' in scenarios and section.library is CQRS_CELERY:
                _creates_publisher_process(section, rec, queue, c, n)
            worker.stop()
        if 'D' in scenarios:
            _drain(section, rec, master, worker, c, n)
            # cqrs_celery's master publishing inline: one message per change, as django-cqrs sends them
            inline, _ = section.services(queue, publisher='inline')
            _drain(section, rec, inline, worker, c, n, 'backlog drain, one message per change')
    except StepFailed as exc:
        rec.log(f'  {lib}: failed: {exc}')
        rec.add('-', 'run failed', lib, None, '', c, note=str(exc).splitlines()[0])
    finally:
        worker.stop()
        section.clean(queue)


def _rows_scenarios(section: Section, rec: Recorder, master: Service, worker: Worker, c: int, n: int,
                    latency_rows: int, scenarios: set[str], sync_rows: int = 0) -> None:
    lib = section.library.name
    # A: n creates flat out; the rate runs from the first save to the last row made visible.
    created = master.driver('create', str(n))
    (count, _, last), ok = section.wait_rows(n)
    value = n / (last - created['start']) if ok else None
    if 'A' in scenarios:
        rec.add('A', 'creates end to end', lib, value, 'events/s', c, '' if ok else f'timed out at {count}/{n}')
        rec.log(f'  {lib}: A {_fmt(value)} creates/s (master alone: {n / (created["end"] - created["start"]):.0f}/s)')
    if not ok:
        return
    if 'A' in scenarios:
        _plain_loop(rec, master, lib, c, n, value)
    if 'B' in scenarios:
        updated = master.driver('update', str(n))
        (count, _, last), ok = section.wait_rows(n, min_revision=1)
        value = n / (last - updated['start']) if ok else None
        rec.add('B', 'updates end to end', lib, value, 'events/s', c, '' if ok else f'timed out at {count}/{n}')
        rec.log(f'  {lib}: B {_fmt(value)} updates/s')
    if 'A' in scenarios and latency_rows:
        _latency(section, rec, master, c, n, latency_rows)
    if 'C' in scenarios:
        _sync(section, rec, master, c, sync_rows)
    if 'E' in scenarios:
        _deletes(section, rec, master, c, n)


def _deletes(section: Section, rec: Recorder, master: Service, c: int, n: int) -> None:
    """E: ``delete()`` of ``n`` rows one by one; the rate runs from the first delete to the replica
    without them (the replica keeps no time of a deletion: it is polled every 5 ms)."""
    lib = section.library.name
    present, _, _ = section.replica_db.progress()
    deleted = master.driver('delete', str(n))
    (count, _, _), ok = wait_for(lambda: section.replica_db.progress(), lambda p: p[0] <= present - n,
                                 deadline_for(n), interval=0.005)
    value = n / (time.time() - deleted['start']) if ok else None
    rec.add('E', 'deletes end to end', lib, value, 'events/s', c, '' if ok else f'timed out at {present - count}/{n}')
    rec.log(f'  {lib}: E {_fmt(value)} deletes/s (master alone: {n / (deleted["end"] - deleted["start"]):.0f}/s)')


def _plain_loop(rec: Recorder, master: Service, lib: str, c: int, n: int, a_rate: float | None,
                a_metric: str = 'creates end to end') -> None:
    """A's loop again, right after it, saving the plain model: A's share of the save loop, run by run.

    The same ``n`` creates from a fresh process as A's master runs (its first saves open connections
    too), while the worker idles: the master's own save rate with replication off, measured as A's
    master is. F's ceilings time saves in a warmed-up process instead. ``a_metric``: the A figure
    that ``a_rate`` is (the share is recorded as ``<a_metric>, share of the same-run plain loop``).

    Then the same loop saving the replicated model with ``CQRS_PRODUCE = False`` (its revision
    columns and its save, no event), also paired run by run: what A costs beyond the model's own
    columns (``<a_metric>, share of the same-run CQRS_PRODUCE = False loop``).
    """
    made = master.driver('create', str(n), '--plain')
    loop = n / (made['end'] - made['start'])
    rec.add('ceiling', PLAIN_LOOP, lib, loop, 'saves/s')  # the worker idles: c does not matter
    if a_rate:
        rec.add('A', f'{a_metric}, share of the same-run plain loop', lib, 100 * a_rate / loop, '%', c)
    made = master.driver('create', str(n), '--quiet')
    quiet = n / (made['end'] - made['start'])
    rec.add('ceiling', QUIET_LOOP, lib, quiet, 'saves/s')
    if a_rate:
        rec.add('A', f'{a_metric}, share of the same-run CQRS_PRODUCE = False loop', lib, 100 * a_rate / quiet, '%',
                c)
    rec.log(f'  {lib}: plain loop like A\'s {loop:.0f} saves/s, CQRS_PRODUCE = False {quiet:.0f} saves/s'
            + (f' ({a_metric.replace("creates end to end", "A")} at {100 * a_rate / loop:.1f} % and '
               f'{100 * a_rate / quiet:.1f} % of them)' if a_rate else ''))


def _creates_publisher_process(section: Section, rec: Recorder, queue: str, c: int, n: int) -> None:
    """A with cqrs_celery's publisher as a process of its own (``publisher='relay'`` and
    ``cqrs_outbox relay --follow``): the saving process only writes its outbox rows."""
    lib, label = section.library.name, 'creates end to end, publisher process'
    section.empty()
    master, _ = section.services(queue, publisher='relay')
    follower = master.manage_in_background('cqrs_outbox', 'relay', '--follow')
    try:
        created = master.driver('create', str(n))
        (count, _, last), ok = section.wait_rows(n)
    finally:
        stop_background(follower)
    value = n / (last - created['start']) if ok else None
    rec.add('A', label, lib, value, 'events/s', c, '' if ok else f'timed out at {count}/{n}')
    rec.log(f'  {lib}: A, publisher process {_fmt(value)} creates/s '
            f'(master alone: {n / (created["end"] - created["start"]):.0f}/s)')
    if ok:  # paired with a plain loop of its own, run right after it as A's is
        _plain_loop(rec, master, lib, c, n, value, label)


def _latency(section: Section, rec: Recorder, master: Service, c: int, n: int, rows: int) -> None:
    """A: commit → visible at a steady 100 saves/s, from the master's commit stamps and the trigger's."""
    lib = section.library.name
    made = master.driver('create', str(rows), '--start', str(n), '--rate', '100', '--commit-times',
                         timeout=60 + rows)
    (count, _, _), ok = section.wait_rows(n + rows, deadline=60 + rows / 10)
    seen = section.replica_db.seen_by_pk()
    delays = sorted((seen[int(pk)] - commit) * 1000 for pk, commit in made['commits'].items()
                    if seen.get(int(pk)) is not None)
    note = '' if ok else f'timed out at {count - n}/{rows}'
    if not delays:
        rec.add('A', 'latency p50 @100/s', lib, None, 'ms', c, note or 'no rows')
        return
    p50, p99 = delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    achieved = rows / (made['end'] - made['start'])
    if achieved < 90:
        note = (note + '; ' if note else '') + f'master reached only {achieved:.0f} saves/s'
    rec.add('A', 'latency p50 @100/s', lib, p50, 'ms', c, note)
    rec.add('A', 'latency p99 @100/s', lib, p99, 'ms', c, note)
    rec.log(f'  {lib}: A latency p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(delays)} rows)')


def _sync(section: Section, rec: Recorder, master: Service, c: int, rows: int = 0) -> None:
    """C: ``manage.py cqrs_sync`` of every master row into an emptied replica table.

    The master table is first topped up to ``rows`` rows with unpublished ones (the process start of
    the command then weighs less in the figure, as it does for a real re-sync of a large table).
    """
    lib = section.library.name
    if not has_sync_command(section.library):
        rec.add('C', 'cqrs_sync into empty replica', lib, None, 'rows/s', c, 'n/a: no cqrs_sync command')
        rec.log(f'  {lib}: C n/a (no cqrs_sync command)')
        return
    present = section.master_db.count(MASTER_TABLE)
    if rows > present:
        master.driver('seed', str(rows - present), '--start', str(1_000_000 + present), timeout=60 + rows / 100)
    section.replica_db.empty()
    total = section.master_db.count(MASTER_TABLE)
    extra = ['--filter', '{}'] if section.library is DJCQRS else []
    began = time.time()
    try:
        master.manage('cqrs_sync', '--cqrs-id', CQRS_ID, *extra, timeout=deadline_for(total))
    except StepFailed as exc:
        rec.add('C', 'cqrs_sync into empty replica', lib, None, 'rows/s', c, f'failed: {str(exc).splitlines()[0]}')
        rec.log(f'  {lib}: C failed: {exc}')
        return
    command = time.time() - began
    (count, first, last), ok = section.wait_rows(total)
    value = total / (last - began) if ok else None
    rec.add('C', 'cqrs_sync into empty replica', lib, value, 'rows/s', c, '' if ok else f'timed out at {count}/{total}')
    # The same without the command's process start: first row visible to last.
    applied = (total - 1) / (last - first) if ok and last > first else None
    rec.add('C', 'cqrs_sync, first to last row visible', lib, applied, 'rows/s', c)
    rec.log(f'  {lib}: C {_fmt(value)} rows/s, {_fmt(applied)} rows/s from the first row seen '
            f'(command ran {command:.1f} s for {total} rows)')


def _drain(section: Section, rec: Recorder, master: Service, worker: Worker, c: int, n: int,
           label: str = 'backlog drain') -> None:
    """D: n changes while no worker runs, then a worker drains the backlog.

    With ``label`` 'backlog drain, one message per change', cqrs_celery's master publishes inline,
    so the backlog holds single-row messages as django-cqrs's does (its master ignores the setting),
    and the figure shows the replica grouping queued messages rather than the master batching rows.
    """
    lib = section.library.name
    suffix = label.removeprefix('backlog drain')
    section.empty()
    master.driver('create', str(n))
    # A library may put several changes in one message: wait until the queue stops growing.
    depths: list[int] = []

    def settled() -> bool:
        depths.append(section.broker.depth(master.queue))
        return len(depths) >= 3 and depths[-1] > 0 and depths[-1] == depths[-3]

    _, ok = wait_for(settled, bool, 30, interval=0.25)
    if not ok:
        rec.add('D', label, lib, None, 'rows/s', c, f'queue did not settle: {depths[-1]} messages')
        rec.log(f'  {lib}: D{suffix} failed: queue did not settle ({depths[-1]} messages)')
        return
    rec.add('D', f'messages queued{suffix}', lib, depths[-1], 'messages', c)
    size = section.broker.message_size(master.queue)
    if size and not suffix:
        rec.add('D', 'message size', lib, size, 'bytes', c)
    worker.start()
    (count, first, last), ok = section.wait_rows(n)
    worker.stop()
    value = (n - 1) / (last - first) if ok and last > first else None
    rec.add('D', label, lib, value, 'rows/s', c, '' if ok else f'timed out at {count}/{n}')
    rec.log(f'  {lib}: D{suffix} {_fmt(value)} rows/s drained ({depths[-1]} messages of {size} bytes)')


def run_cost(section: Section, rec: Recorder, n: int) -> None:
    """F: milliseconds a save (create, update) and a delete cost on top of the same on a plain Django model."""
    # (label suffix, outbox, broker, cqrs_celery publisher): cqrs_celery publishes from a background
    # thread by default; 'inline' publishes in the saving thread after commit, as django-cqrs does.
    variants = [('', True, None, '')]
    if section.library is CQRS_CELERY:
        variants += [(' (inline publish)', True, None, 'inline'), (' (outbox off)', False, None, ''),
                     (' (publisher process)', True, None, 'relay')]
    variants += [(' (no broker)', True, 'none', '')]
    for suffix, outbox, broker_url, publisher in variants:
        label = f'{section.library.name}{suffix}'
        queue = section.new_queue()
        master, replica = section.services(queue, outbox=outbox, broker_url=broker_url, publisher=publisher)
        try:
            section.empty()
            if broker_url is None:
                section.declare(replica)
            result = master.driver('cost', str(n))
        except StepFailed as exc:
            rec.add('F', 'create cost', label, None, 'ms', note=f'failed: {str(exc).splitlines()[0]}')
            rec.log(f'  {label}: F failed: {exc}')
            continue
        finally:
            if broker_url is None:
                section.clean(queue)
        plain, cqrs = result['plain'], result['cqrs']
        for kind in ('create', 'update', 'delete'):
            rec.add('F', f'{kind} cost', label, cqrs[kind]['mean_ms'] - plain[kind]['mean_ms'], 'ms')
        if not suffix:
            rec.add('ceiling', 'master save loop, replication off', label, 1000 / plain['create']['mean_ms'],
                    'saves/s')
            rec.add('ceiling', 'master save loop, CQRS_PRODUCE = False', label,
                    1000 / result['quiet']['create']['mean_ms'], 'saves/s')
        rec.log(f'  {label}: F create +{cqrs["create"]["mean_ms"] - plain["create"]["mean_ms"]:.2f} ms, '
                f'update +{cqrs["update"]["mean_ms"] - plain["update"]["mean_ms"]:.2f} ms, '
                f'delete +{cqrs["delete"]["mean_ms"] - plain["delete"]["mean_ms"]:.2f} ms '
                f'(plain create {plain["create"]["mean_ms"]:.2f} ms, CQRS_PRODUCE = False '
                f'{result["quiet"]["create"]["mean_ms"]:.2f} ms)')


def run_memory(section: Section, rec: Recorder, concurrency: int, checkpoints: list[int]) -> None:
    """G: RSS of the worker processes (summed) idle and after each checkpoint's messages applied."""
    lib = section.library.name
    rows = min(1000, checkpoints[0])
    rounds = max(0, -(-(checkpoints[-1] - rows) // rows))
    queue = section.new_queue()
    master, replica = section.services(queue)
    worker = Worker(replica, concurrency)
    flood = None
    try:
        section.empty()
        section.declare(replica)
        worker.start()
        section.warm_up(master, worker)
        rec.add('G', 'worker RSS idle', lib, worker.rss_mib(), 'MiB', concurrency)
        master.driver('bulk-seed', str(rows))
        flood = master.driver_in_background('flood', str(rounds))
        for target in checkpoints:
            applied, ok = wait_for(section.replica_db.applied, lambda a, t=target: a >= t, deadline_for(target),
                                   interval=0.25)
            label = f'worker RSS after {_count(target)} events'
            rec.add('G', label, lib, worker.rss_mib() if ok else None, 'MiB', concurrency,
                    '' if ok else f'timed out at {applied}/{target}')
            rec.log(f'  {lib}: G {label}: {worker.rss_mib():.0f} MiB' + ('' if ok else ' (timed out)'))
            if not ok:
                break
    except StepFailed as exc:
        rec.log(f'  {lib}: G failed: {exc}')
        rec.add('G', 'worker RSS idle', lib, None, 'MiB', concurrency, note=f'failed: {str(exc).splitlines()[0]}')
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
        if flood is not None:
            flood.wait()
        worker.stop()
        section.clean(queue)


def run_db_ceiling(section: Section, rec: Recorder, n: int) -> None:
    """Ceilings of the replica database: one transaction per row, and bulk_create."""
    _, replica = section.services('bench_ceiling')
    section.replica_db.empty()
    result = replica.driver('db-ceiling', str(n))
    rec.add('ceiling', 'replica insert, one transaction per row', 'database', result['per_row'], 'rows/s')
    rec.add('ceiling', 'replica bulk_create', 'database', result['bulk'], 'rows/s')
    rec.log(f'  database: {result["per_row"]:.0f} rows/s one per transaction, {result["bulk"]:.0f} rows/s bulk')


def run_broker_ceiling(broker: Broker, rec: Recorder, n: int, size: int) -> None:
    result = broker.ceiling(n, size, f'bench_ceiling_{os.getpid()}')
    note = '' if result['complete'] else 'consume timed out'
    rec.add('ceiling', f'kombu publish, {result["size"]} B messages', 'broker', result['publish'], 'msgs/s')
    rec.add('ceiling', 'kombu consume + ack', 'broker', result['consume'], 'msgs/s', note=note)
    rec.log(f'  {broker.kind}: kombu {result["publish"]:.0f} publishes/s, {result["consume"]:.0f} consumes/s '
            f'({result["size"]} B)')


def _fmt(value: float | None) -> str:
    return 'timed out' if value is None else f'{value:.0f}'


def _count(value: int) -> str:
    return f'{value // 1000}k' if value % 1000 == 0 else str(value)
