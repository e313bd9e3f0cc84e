"""The README's first command, run as a newcomer runs it: ``python3 example_master/demo.py`` in a
fresh copy of the checkout, from a shell with no virtual environment and no Django settings.

The first run creates ``.venv`` and installs the project from the package index (skipped where the
index cannot be reached, required in CI like the other services); the next runs reuse it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.harness import services_required, wait_until

ROOT = Path(__file__).resolve().parents[1]
#: What a fresh clone does not have.
NOT_IN_A_CLONE = shutil.ignore_patterns('.git', '.venv', '.demo', '__pycache__', '*.pyc', '*.egg-info', 'build',
                                        'dist', '.pytest_cache', '.mypy_cache', '.ruff_cache', 'celerybeat-schedule*')
#: Variables a newcomer's shell would not have, which would steer the demo's services elsewhere.
NOT_IN_A_NEW_SHELL = {'DJANGO_SETTINGS_MODULE', 'VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'CELERY_BROKER_URL',
                      'DATABASE_URL', 'REPLICA_QUEUE', 'STOCK_LOG_FILE', 'EXAMPLE_DATA_DIR', 'LIBRARY_TENANT',
                      'CQRS_DEMO_IN_VENV'}
INSTALL_TIMEOUT = 900


def newcomer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_NEW_SHELL and not k.startswith('CQRS_TEST_')}
    venvs = {Path(p).resolve() for p in (os.environ.get('VIRTUAL_ENV'), sys.prefix) if p}
    paths = [p for p in env.get('PATH', '').split(os.pathsep)
             if p and not any(Path(p).resolve().is_relative_to(v) for v in venvs if v != Path(sys.base_prefix))]
    env['PATH'] = os.pathsep.join(paths)
    return env


def python3(env: dict[str, str]) -> str:
    return shutil.which('python3', path=env['PATH']) or sys.executable


@pytest.fixture(scope='module')
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp('newcomer') / 'cqrs_celery'
    shutil.copytree(ROOT, copy, ignore=NOT_IN_A_CLONE, symlinks=True)
    assert not (copy / '.venv').exists()
    return copy


def leftover_processes(folder: Path) -> list[str]:
    """Command lines of running processes that belong to ``folder`` (its .venv's python, celery…)."""
    found = []
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            text = cmdline.read_bytes().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        if str(folder) in text:
            found.append(f'{cmdline.parent.name}: {text}')
    return found


def run_demo(checkout: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = newcomer_env()
    return subprocess.run([python3(env), 'example_master/demo.py', *args], cwd=checkout, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def first_run(checkout: Path) -> subprocess.CompletedProcess[str]:
    result = run_demo(checkout, timeout=INSTALL_TIMEOUT)
    if result.returncode != 0 and 'setting up' in result.stdout and not services_required():
        pytest.skip(f'the demo could not install its environment (no package index?):\n{result.stdout[-2000:]}')
    return result


def test_the_demo_installs_itself_and_ends_with_the_replica_equal_to_the_master(checkout, first_run):
    output = first_run.stdout
    assert first_run.returncode == 0, output[-6000:]
    assert 'creating' in output and 'pip install -e .' in output
    assert (checkout / '.venv' / 'bin' / 'python').exists()
    assert 'celery -A example_replica worker -Q my_replica -c 2' in output
    assert 'The replica is equal to the master: 3 authors and 4 books' in output


def test_the_demo_shows_rows_arriving_with_metadata_mapping_and_the_stock_log(first_run):
    output = first_run.stdout
    final = output[output.rindex('master: all steps done'):]
    tables, stock_log = final[:final.index('STOCK')], final[final.index('STOCK'):]
    assert 'Octavia Estelle Butler' in tables and 'admin:alice' in tables  # metadata, on the replica side
    assert 'A Wizard of Earthsea' in tables and '24.00' in tables  # the mapped book copy
    assert 'Untitled Draft' not in tables  # deleted on the master, so on the replica
    assert 'in step' in tables and 'missing' not in tables
    # the raw replica's log: each published step (changes published together make one step)
    assert re.search(r"stock of 'Dune' changed from 8 to [67]", stock_log), stock_log
    assert output.count('master: step ') == 6  # one snapshot per step when the output is no terminal


def test_the_demo_stops_everything_it_started(checkout, first_run):
    assert first_run.returncode == 0
    assert leftover_processes(checkout) == []


def test_a_second_run_reuses_the_environment_and_takes_less_than_a_minute(checkout, first_run):
    assert first_run.returncode == 0
    started = time.monotonic()
    result = run_demo(checkout)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:]
    assert 'pip install' not in result.stdout
    assert 'The replica is equal to the master' in result.stdout
    assert took < 60, f'the demo took {took:.0f} s'


@pytest.fixture
def running_demo(checkout: Path, first_run: subprocess.CompletedProcess[str]
                 ) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    assert first_run.returncode == 0
    env = newcomer_env()
    process = subprocess.Popen([python3(env), 'example_master/demo.py', '--pause', '3'], cwd=checkout, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout or []:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def test_ctrl_c_stops_the_worker_and_everything_else_the_demo_started(checkout, running_demo):
    process, lines = running_demo
    wait_until(lambda: any(line.startswith('master: step 2/') for line in lines) or process.poll() is not None,
               timeout=90, message=lambda: 'the demo reaching step 2:\n' + ''.join(lines[-30:]))
    assert process.poll() is None, ''.join(lines)
    assert any('example_replica worker' in p for p in leftover_processes(checkout))

    process.send_signal(signal.SIGINT)
    assert process.wait(45) == 130
    time.sleep(0.5)  # the reader thread catches up with the last lines
    output = ''.join(lines)
    assert 'interrupted: stopping everything the demo started' in output and 'stopped.' in output
    assert leftover_processes(checkout) == []
