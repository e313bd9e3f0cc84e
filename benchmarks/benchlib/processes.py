"""The services' processes: each library's virtual environment, its commands, its replica worker."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchlib.services import ROOT, Database

BENCH = ROOT / 'benchmarks'
LOGS = ROOT / '.bench' / 'logs'
DJCQRS_VENV = ROOT / '.bench' / 'venv-djcqrs'
#: django-cqrs and what its transports need; installed into its own venv, never into the library's.
DJCQRS_REQUIREMENTS = ['django-cqrs==3.1.0', 'pika', 'kombu', 'redis', 'packaging', 'psycopg[binary]']


class Library:
    """One of the two libraries: its venv's Python, its bench project, its short name."""

    def __init__(self, name: str, short: str, python: Path, project: str) -> None:
        self.name = name
        self.short = short
        self.python = python
        self.project = BENCH / 'projects' / project

    def __repr__(self) -> str:
        return self.name


CQRS_CELERY = Library('cqrs_celery', 'cc', Path(sys.executable), 'cqrs_celery_bench')
DJCQRS = Library('django-cqrs', 'dj', DJCQRS_VENV / 'bin' / 'python', 'djcqrs_bench')
LIBRARIES = [CQRS_CELERY, DJCQRS]


def ensure_djcqrs_venv(log) -> None:
    """Create ``.bench/venv-djcqrs`` with django-cqrs 3.1.0 unless it is there already."""
    marker = DJCQRS_VENV / '.bench-ready'
    if marker.exists() and marker.read_text() == '\n'.join(DJCQRS_REQUIREMENTS):
        return
    log(f'creating {DJCQRS_VENV.relative_to(ROOT)} with {" ".join(DJCQRS_REQUIREMENTS)}')
    subprocess.run([sys.executable, '-m', 'venv', '--clear', str(DJCQRS_VENV)], check=True)
    result = subprocess.run([str(DJCQRS.python), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
                             *DJCQRS_REQUIREMENTS], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'pip install into {DJCQRS_VENV} failed:\n{result.stdout}{result.stderr}')
    marker.write_text('\n'.join(DJCQRS_REQUIREMENTS))


def compile_sources() -> None:
    """Byte-compile the library and both bench projects, as installing a package does.

    django-cqrs comes into its venv from a wheel, compiled by pip; cqrs_celery is an editable
    checkout. Where ``PYTHONDONTWRITEBYTECODE`` is set, every process the benchmark starts would
    compile cqrs_celery's modules again (about 0.2 s of a 1.3 s start-up on a slow machine), a cost
    no installed copy pays. Reading ``.pyc`` files works with that variable set; only writing them
    on import does not, so they are written here.
    """
    for folder in (ROOT / 'cqrs_celery', BENCH / 'projects'):
        compileall.compile_dir(str(folder), quiet=2)


def has_sync_command(library: Library) -> bool:
    """Whether the library has ``manage.py cqrs_sync`` (cqrs_celery's is still being written)."""
    if library is DJCQRS:
        return True
    return (ROOT / 'cqrs_celery' / 'management' / 'commands' / 'cqrs_sync.py').exists()


def stop_background(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in the background (``cqrs_outbox relay --follow``): SIGTERM, then
    SIGKILL if it has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StepFailed(RuntimeError):
    """A service command failed; the message carries the tail of its output."""


class Service:
    """One library's master or replica service: its environment and the commands it runs."""

    def __init__(self, library: Library, role: str, database: Database, broker_url: str, queue: str,
                 outbox: bool = True, publisher: str = '') -> None:
        self.library = library
        self.role = role
        self.database = database
        self.queue = queue
        self.env = {
            **os.environ,
            'PYTHONPATH': f'{library.project}{os.pathsep}{BENCH / "projects"}',
            'DJANGO_SETTINGS_MODULE': 'benchproj.settings',
            'BENCH_PROJECT': str(library.project),
            'BENCH_ROLE': role,
            'BENCH_DB': database.url,
            'BENCH_BROKER': broker_url,
            'BENCH_QUEUE': queue,
            'BENCH_OUTBOX': '1' if outbox else '0',
            'BENCH_PUBLISHER': publisher,
        }

    def run(self, args: list[str], timeout: float) -> str:
        try:
            result = subprocess.run(args, env=self.env, cwd=self.library.project, capture_output=True, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise StepFailed(f'{self.library} {" ".join(args[1:3])}: no answer within {timeout:.0f} s') from exc
        if result.returncode != 0:
            tail = '\n'.join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise StepFailed(f'{self.library} {" ".join(args[1:4])} exited {result.returncode}:\n{tail}')
        return result.stdout

    def manage(self, *args: str, timeout: float = 300) -> str:
        return self.run([str(self.library.python), 'manage.py', *args], timeout)

    def driver(self, *args: str, timeout: float = 600) -> dict:
        output = self.run([str(self.library.python), str(BENCH / 'driver.py'), *args], timeout)
        return json.loads(output.strip().splitlines()[-1])

    def manage_in_background(self, *args: str) -> subprocess.Popen:
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / f'{self.queue}-{self.role}-{args[0]}.log').open('ab') as log:
            return subprocess.Popen([str(self.library.python), 'manage.py', *args], env=self.env,
                                    cwd=self.library.project, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def driver_in_background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.library.python), str(BENCH / 'driver.py'), *args], env=self.env,
                                cwd=self.library.project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)


class Worker:
    """The replica service's worker: ``celery worker -Q <queue> -c <n>`` or ``cqrs_consume -w <n>``."""

    def __init__(self, service: Service, concurrency: int) -> None:
        self.service = service
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f'{service.queue}.log'

    def start(self) -> Worker:
        library = self.service.library
        if library is CQRS_CELERY:
            args = [str(library.python), '-m', 'celery', '-A', 'benchproj', 'worker', '-Q', self.service.queue,
                    '-c', str(self.concurrency), '-n', f'{self.service.queue}@%h', '--loglevel=WARNING',
                    '--without-mingle', '--without-gossip', '--without-heartbeat']
        else:
            args = [str(library.python), 'manage.py', 'cqrs_consume', '-w', str(self.concurrency)]
        with self.log_path.open('ab') as log:
            self.process = subprocess.Popen(args, env=self.service.env, cwd=library.project, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        if not self.log_path.exists():
            return '(no log)'
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (both workers stop their pool on it), then SIGKILL of its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Pool processes left behind (the group is this worker's own session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.process = None

    def rss_mib(self) -> float:
        """Resident memory of the worker and all its descendants, summed, in MiB."""
        if self.process is None:
            return 0.0
        children: dict[int, list[int]] = {}
        for entry in Path('/proc').iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / 'stat').read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(')', 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        total_kib, todo = 0, [self.process.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            with contextlib.suppress(OSError):
                for line in Path(f'/proc/{pid}/status').read_text().splitlines():
                    if line.startswith('VmRSS:'):
                        total_kib += int(line.split()[1])
        return total_kib / 1024

