"""Real services for the broker tests (tier iii): brokers, replica worker processes, polling.

A missing service skips these tests on a laptop; with ``CQRS_REQUIRE_SERVICES=1`` (CI) it fails
them instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kombu import Connection

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = Path(os.environ.get('CQRS_TEST_LOG_DIR', '/tmp/cqrs_celery_test_logs'))

BROKERS = {
    'amqp': os.environ.get('CQRS_TEST_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672//'),
    # a database index of its own, flushed after every test
    'redis': os.environ.get('CQRS_TEST_REDIS_URL', 'redis://127.0.0.1:6379/13'),
}
POSTGRES = ('127.0.0.1', 5432)


def services_required() -> bool:
    return os.environ.get('CQRS_REQUIRE_SERVICES', '').lower() in {'1', 'true', 'yes'}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) unless ``host:port`` answers."""
    if _port_open(host, port):
        return
    message = f'{name} is not reachable on {host}:{port}'
    if services_required():
        pytest.fail(f'{message} and CQRS_REQUIRE_SERVICES is set', pytrace=False)
    pytest.skip(message)


def require_broker(kind: str) -> str:
    url = BROKERS[kind]
    parsed = urlparse(url)
    require(kind, parsed.hostname or '127.0.0.1', parsed.port or (5672 if kind == 'amqp' else 6379))
    return url


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.1,
               message: str | Callable[[], str] = 'condition') -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f'timed out after {timeout}s waiting for: {text}', pytrace=False)
        time.sleep(interval)


def unique_queue(prefix: str) -> str:
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


def service_env(broker_url: str, queue: str, database: str) -> dict[str, str]:
    """Environment of one replica service of the test project."""
    env = dict(os.environ)
    env.update({
        'DJANGO_SETTINGS_MODULE': 'tests.settings',
        'PYTHONPATH': os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]),
        'CQRS_TEST_DATABASE': 'postgres',
        'CQRS_TEST_DEFAULT_DB': database,
        'CQRS_TEST_QUEUE': queue,
        'CQRS_TEST_BROKER': broker_url,
        'CELERY_SKIP_CHECKS': '',
        'CQRS_TEST_CONN_MAX_AGE': '60',
    })
    return env


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``python -m django <args>`` as the service described by ``env``; returns its output."""
    result = subprocess.run([sys.executable, '-m', 'django', *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f'django {" ".join(args)} failed:\n{result.stdout}\n{result.stderr}')
    return result.stdout


class CeleryProcess:
    """A ``celery -A tests.celery_app …`` process of the test project, logging to a file."""

    ready_marker = b' ready.'

    def __init__(self, env: dict[str, str], arguments: list[str], name: str) -> None:
        self.env = env
        self.arguments = arguments
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f'{name}.log'

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60) -> CeleryProcess:
        """Launch the process and wait until its log says it is ready."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> CeleryProcess:
        """Start the process without waiting for it to be ready."""
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open('ab')
        self.process = subprocess.Popen(self.command(), env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        return self

    def wait_ready(self, timeout: float = 60) -> CeleryProcess:
        offset = self._offset
        wait_until(lambda: self._ready(offset), timeout=timeout,
                   message=lambda: f'{self.name} ready; log tail:\n{self.log_tail()}')
        return self

    def command(self) -> list[str]:
        return [sys.executable, '-m', 'celery', '-A', 'tests.celery_app', *self.arguments]

    def _ready(self, offset: int) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f'{self.name} exited with {self.process.returncode}:\n{self.log_tail()}', pytrace=False)
        return self.ready_marker in self.log_path.read_bytes()[offset:]

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return '(no log)'
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it hangs."""
        self.terminate()
        self.wait_stopped(timeout)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting for it.

        Warm shutdown is the main process's job; it stops its pool children itself.
        """
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 30) -> None:
        """Wait for the process to exit; SIGKILL its process group if it has not within ``timeout``."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def start_all(*processes: CeleryProcess, timeout: float = 60) -> None:
    """Start every process at once and wait until each is ready: each start takes seconds."""
    for process in processes:
        process.launch()
    for process in processes:
        process.wait_ready(timeout)


def stop_all(processes: list[CeleryProcess], timeout: float = 30) -> None:
    """Warm-shut down every process at once: each takes seconds, and they do not wait for each other."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait_stopped(timeout)


class ReplicaWorker(CeleryProcess):
    """``celery -A tests.celery_app worker -Q <queue> -c 2`` as a real process."""

    def __init__(self, broker_url: str, queue: str, database: str, concurrency: int = 2, node: str = '',
                 **env: str) -> None:
        name = f'{queue}-{node}' if node else queue
        super().__init__({**service_env(broker_url, queue, database), **env},
                         ['worker', '-Q', queue, '-c', str(concurrency), '--loglevel=INFO', '-n', f'{name}@%h',
                          '--without-mingle', '--without-gossip'], name)
        self.queue = queue


def master_env(broker_url: str, database: str, master_queue: str) -> dict[str, str]:
    """Environment of the test project playing the master service (no replica queue of its own)."""
    return {**service_env(broker_url, '', database), 'CQRS_TEST_MASTER_QUEUE': master_queue}


class MasterWorker(CeleryProcess):
    """The master's worker: runs the outbox relay tasks beat sends to the master queue."""

    def __init__(self, broker_url: str, database: str, master_queue: str) -> None:
        super().__init__(master_env(broker_url, database, master_queue),
                         ['worker', '-Q', master_queue, '-c', '1', '--loglevel=INFO', '-n', f'{master_queue}@%h',
                          '--without-mingle', '--without-gossip'], master_queue)


class Follower(CeleryProcess):
    """``manage.py cqrs_outbox relay --follow``: the master's publisher as a process of its own."""

    ready_marker = b'publishing the outbox'

    def __init__(self, broker_url: str, database: str, name: str) -> None:
        super().__init__(master_env(broker_url, database, ''), [], name)

    def command(self) -> list[str]:
        # (--skip-checks: the test project declares replica models, and a master service has no queue)
        return [sys.executable, '-m', 'django', 'cqrs_outbox', 'relay', '--follow', '--skip-checks']


class Beat(CeleryProcess):
    """``celery beat`` of the master, with the schedule from ``cqrs_celery.beat.beat_schedule``."""

    ready_marker = b'beat: Starting'

    def __init__(self, broker_url: str, database: str, master_queue: str) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        schedule = LOG_DIR / f'{master_queue}-beat-schedule'
        super().__init__(master_env(broker_url, database, master_queue),
                         ['beat', '--loglevel=INFO', '-s', str(schedule)], f'{master_queue}-beat')


class ReplicaBeat(CeleryProcess):
    """``celery beat`` of a replica service: only the reconciliation entries, sent to its own queue."""

    ready_marker = b'beat: Starting'

    def __init__(self, broker_url: str, queue: str, database: str, master_queue: str, every: float,
                 content_every: float) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        schedule = LOG_DIR / f'{queue}-beat-schedule'
        env = {**service_env(broker_url, queue, database), 'CQRS_TEST_RECONCILE_MASTER_QUEUE': master_queue,
               'CQRS_TEST_RECONCILE_EVERY': str(every), 'CQRS_TEST_RECONCILE_CONTENT_EVERY': str(content_every)}
        super().__init__(env, ['beat', '--loglevel=INFO', '-s', str(schedule)], f'{queue}-beat')


def stop_broker(kind: str) -> None:
    """Stop the local RabbitMQ (its application; the node stays) or Redis server."""
    if kind == 'amqp':
        subprocess.run(['rabbitmqctl', 'stop_app'], check=True, capture_output=True, timeout=120)
    else:
        subprocess.run(['redis-cli', '-p', '6379', 'shutdown', 'nosave'], capture_output=True, timeout=60)
    wait_until(lambda: not _port_open('127.0.0.1', 5672 if kind == 'amqp' else 6379), timeout=60,
               message=f'{kind} stopped')


def start_broker(kind: str) -> None:
    """Start the local broker again, the way the machine starts it."""
    if kind == 'amqp':
        subprocess.run(['rabbitmqctl', 'start_app'], check=True, capture_output=True, timeout=120)
        subprocess.run(['rabbitmqctl', 'await_startup'], check=True, capture_output=True, timeout=120)
    else:
        Path('/var/lib/redis').mkdir(parents=True, exist_ok=True)
        Path('/var/log/redis').mkdir(parents=True, exist_ok=True)
        subprocess.run(['redis-server', '--daemonize', 'yes', '--bind', '127.0.0.1', '-::1', '--port', '6379',
                        '--save', '', '--appendonly', 'no', '--dir', '/var/lib/redis',
                        '--logfile', '/var/log/redis/ci.log'], check=True, capture_output=True, timeout=60)
    wait_until(lambda: _port_open('127.0.0.1', 5672 if kind == 'amqp' else 6379), timeout=120,
               message=f'{kind} started')


def filesystem_dir() -> str:
    """The folder of the filesystem broker test (set by its fixture, read by every service)."""
    return os.environ['CQRS_TEST_FS_DIR']


def clean_broker(broker_url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete the queues and exchanges a test used (Redis: flush the test's own database;
    filesystem: the test's folder is removed with its tmp_path)."""
    if broker_url.startswith('filesystem'):
        return
    with Connection(broker_url, connect_timeout=5) as conn:
        if conn.transport.driver_type == 'redis':
            conn.default_channel.client.flushdb()
            return
        channel = conn.default_channel
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (0 when it does not exist)."""
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            if conn.transport.driver_type == 'redis':
                return int(channel.client.llen(queue))
            return int(channel.queue_declare(queue, passive=True).message_count)
        except Exception:
            return 0
        finally:
            channel.close()
