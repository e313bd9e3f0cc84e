"""Databases and brokers as the benchmark sees them from outside the services.

The replica table gets a column ``bench_seen`` and a trigger that stamps it with the database clock
whenever a row is inserted or its revision changes: the moment a change became visible, measured
the same way for both libraries without touching their code. Everything else here is set-up,
clean-up, polling and the broker ceiling.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / '.bench' / 'data'
REPLICA_TABLE = 'bench_replica_itemcopy'
MASTER_TABLE = 'bench_master_item'
#: Tables that stay when a database is emptied between steps.
KEEP = {'django_migrations', 'django_content_type', 'sqlite_sequence'}

BROKERS = {'amqp': 'amqp://guest:guest@127.0.0.1:5672//', 'redis': 'redis://127.0.0.1:6379/11'}

PG_STAMP = f"""
ALTER TABLE {REPLICA_TABLE} ADD COLUMN IF NOT EXISTS bench_seen double precision;
CREATE OR REPLACE FUNCTION bench_stamp() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.cqrs_revision IS DISTINCT FROM OLD.cqrs_revision THEN
        NEW.bench_seen := extract(epoch FROM clock_timestamp());
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS bench_stamp ON {REPLICA_TABLE};
CREATE TRIGGER bench_stamp BEFORE INSERT OR UPDATE ON {REPLICA_TABLE}
    FOR EACH ROW EXECUTE FUNCTION bench_stamp();
"""
# SQLite cannot assign NEW in a BEFORE trigger: an AFTER trigger updates the row it just wrote
# (that update does not touch cqrs_revision, so it does not fire the trigger again).
SQLITE_NOW = "(julianday('now') - 2440587.5) * 86400.0"
SQLITE_STAMP = [
    f'ALTER TABLE {REPLICA_TABLE} ADD COLUMN bench_seen REAL',
    f'CREATE TRIGGER bench_stamp_insert AFTER INSERT ON {REPLICA_TABLE} BEGIN '
    f'UPDATE {REPLICA_TABLE} SET bench_seen = {SQLITE_NOW} WHERE id = NEW.id; END',
    f'CREATE TRIGGER bench_stamp_update AFTER UPDATE OF cqrs_revision ON {REPLICA_TABLE} '
    f'WHEN NEW.cqrs_revision IS NOT OLD.cqrs_revision BEGIN '
    f'UPDATE {REPLICA_TABLE} SET bench_seen = {SQLITE_NOW} WHERE id = NEW.id; END',
]


class Database:
    """One bench database: a PostgreSQL database ``bench_<name>`` or ``.bench/data/<name>.sqlite3``."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = f'bench_{name}'
        self.path = DATA / f'{name}.sqlite3'

    @property
    def url(self) -> str:
        return f'postgres:///{self.name}' if self.kind == 'postgres' else f'sqlite:///{self.path}'

    def recreate(self) -> None:
        if self.kind == 'postgres':
            import psycopg

            with psycopg.connect('host=127.0.0.1 user=postgres dbname=postgres', autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS {self.name} WITH (FORCE)')
                conn.execute(f'CREATE DATABASE {self.name}')
        else:
            DATA.mkdir(parents=True, exist_ok=True)
            for suffix in ('', '-wal', '-shm'):
                Path(f'{self.path}{suffix}').unlink(missing_ok=True)

    def drop(self) -> None:
        if self.kind == 'postgres':
            import psycopg

            with psycopg.connect('host=127.0.0.1 user=postgres dbname=postgres', autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS {self.name} WITH (FORCE)')

    def connect(self):
        if self.kind == 'postgres':
            import psycopg

            return psycopg.connect(f'host=127.0.0.1 user=postgres dbname={self.name}', autocommit=True)
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect()
        try:
            cursor = conn.execute(sql.replace('%s', '?') if self.kind == 'sqlite' else sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            conn.close()

    def install_stamp(self) -> None:
        """The ``bench_seen`` column and its trigger on the replica table."""
        if self.kind == 'postgres':
            self.execute(PG_STAMP)
        else:
            for statement in SQLITE_STAMP:
                self.execute(statement)

    def tables(self) -> list[str]:
        if self.kind == 'postgres':
            rows = self.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        else:
            rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [name for (name,) in rows if name not in KEEP]

    def empty(self) -> None:
        """Delete every row of the bench and library tables; ids start again from 1."""
        tables = self.tables()
        if not tables:
            return
        if self.kind == 'postgres':
            self.execute(f'TRUNCATE {", ".join(tables)} RESTART IDENTITY')
        else:
            conn = self.connect()
            try:
                for table in tables:
                    conn.execute(f'DELETE FROM {table}')
                conn.execute('DELETE FROM sqlite_sequence')
            finally:
                conn.close()

    def count(self, table: str) -> int:
        return int(self.execute(f'SELECT count(*) FROM {table}')[0][0])

    def progress(self, min_revision: int = 0) -> tuple[int, float | None, float | None]:
        """Replica rows at ``min_revision`` or above, and the first and last time one became visible."""
        count, first, last = self.execute(
            f'SELECT count(*), min(bench_seen), max(bench_seen) FROM {REPLICA_TABLE} WHERE cqrs_revision >= %s',
            (min_revision,))[0]
        return int(count), first, last

    def applied(self) -> int:
        """Events applied to the replica table so far: one create plus one per revision, per row."""
        return int(self.execute(f'SELECT count(*) + coalesce(sum(cqrs_revision), 0) FROM {REPLICA_TABLE}')[0][0])

    def seen_by_pk(self) -> dict[int, float]:
        return {int(pk): seen for pk, seen in self.execute(f'SELECT id, bench_seen FROM {REPLICA_TABLE}')}


def wait_for(probe, done, deadline: float, interval: float = 0.05):
    """Call ``probe()`` until ``done(value)`` or the deadline (seconds from now); returns (value, ok)."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if done(value):
            return value, True
        if time.monotonic() > end:
            return value, False
        time.sleep(interval)


class Broker:
    """The broker of one section of the run (``amqp`` or ``redis``), seen through kombu."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = BROKERS[kind]

    def connection(self):
        from kombu import Connection

        return Connection(self.url, connect_timeout=5)

    def depth(self, queue: str) -> int:
        with self.connection() as conn:
            channel = conn.channel()
            try:
                if self.kind == 'redis':
                    return int(channel._size(queue))
                return int(channel.queue_declare(queue, passive=True).message_count)
            except Exception:
                return 0
            finally:
                channel.close()

    def message_size(self, queue: str) -> int | None:
        """Size in bytes of the body of the first message in ``queue`` (put back afterwards)."""
        from kombu import Queue

        with self.connection() as conn:
            message = Queue(queue, no_declare=True)(conn.default_channel).get(no_ack=False)
            if message is None:
                return None
            size = len(message.body)
            message.requeue()
            return size

    def declare_topic_queue(self, exchange: str, queue: str, routing_keys: list[str]) -> None:
        """A durable queue bound to a durable topic exchange (as django-cqrs's consumer declares them)."""
        from kombu import Exchange, Queue

        with self.connection() as conn:
            channel = conn.default_channel
            target = Exchange(exchange, 'topic', durable=True)
            target(channel).declare()
            for key in routing_keys:
                Queue(queue, target, routing_key=key, durable=True)(channel).declare()

    def purge(self, queue: str) -> None:
        from kombu import Queue

        with self.connection() as conn:
            Queue(queue, no_declare=True)(conn.default_channel).purge()

    def clean(self, queues: list[str], exchanges: list[str]) -> None:
        """Delete our queues and exchanges (Redis: flush the benchmark's own database)."""
        with self.connection() as conn:
            channel = conn.default_channel
            if self.kind == 'redis':
                channel.client.flushdb()
                return
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in exchanges:
                channel.exchange_delete(exchange)

    def ceiling(self, count: int, size: int, queue: str) -> dict:
        """Raw kombu: persistent publishes of ``size``-byte messages, then consuming and acking them."""
        from kombu import Consumer, Exchange, Producer, Queue

        pad = max(size - len('{"pad": ""}'), 0)
        body = ('{"pad": "' + 'x' * pad + '"}').encode()
        exchange = Exchange('bench_ceiling', 'direct', durable=True)
        target = Queue(queue, exchange, routing_key=queue, durable=True)
        with self.connection() as conn:
            channel = conn.channel()
            target(channel).declare()
            producer = Producer(channel, exchange=exchange, routing_key=queue)
            began = time.perf_counter()
            for _ in range(count):
                producer.publish(body, content_type='application/json', content_encoding='utf-8', delivery_mode=2)
            published = count / (time.perf_counter() - began)
            received = 0

            def on_message(body, message) -> None:
                nonlocal received
                received += 1
                message.ack()

            consumer_channel = conn.channel()
            consumer_channel.basic_qos(0, 100, False)
            with Consumer(consumer_channel, queues=[target], callbacks=[on_message], accept=['json']):
                began = time.perf_counter()
                end = time.monotonic() + 120
                while received < count and time.monotonic() < end:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=1)
                consumed = received / (time.perf_counter() - began)
            target(channel).delete()
            if self.kind == 'amqp':
                exchange(channel).delete()
        return {'publish': published, 'consume': consumed, 'size': len(body), 'complete': received == count}
