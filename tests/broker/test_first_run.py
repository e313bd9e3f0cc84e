"""A new user follows only the README (issue 9, point 6): two fresh projects made with
``startproject``, a master (``shop``, app ``library``) and a replica (``billing``, app ``catalog``),
each given exactly the README's snippets — ``celery.py``, the settings block with
``CELERY_BROKER_URL = 'filesystem://'``, the models, the metadata function, the SQLite options —
then migrated, the queue declared and the README's processes started from each project's own
folder. A row saved on the master replicates on the first try.

Needs no broker server and no database server: the embedded filesystem broker and SQLite. The
shared broker folder is this test's own (``CQRS_FILESYSTEM_BROKER``, the documented variable), so
it never meets other runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.harness import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / 'README.md').read_text()
#: Authors saved one by one after the first book: two replica worker processes apply them at once.
MORE_AUTHORS = 150


def readme_block(first_line: str) -> str:
    """The README's ```python block whose first line starts with ``first_line``."""
    blocks = [b for b in re.findall(r'^```python\n(.*?)^```', README, flags=re.M | re.S) if b.startswith(first_line)]
    assert len(blocks) == 1, f'README has {len(blocks)} python blocks starting with {first_line!r}'
    return blocks[0]


def embedded_broker(settings_block: str) -> str:
    """The settings block with the broker line the README's comment offers: ``'filesystem://'``."""
    changed, count = re.subn(r"^CELERY_BROKER_URL = .*$", "CELERY_BROKER_URL = 'filesystem://'", settings_block,
                             flags=re.M)
    assert count == 1
    return changed


def user_env(broker_folder: Path) -> dict[str, str]:
    """A shell with the project installed and nothing of the test project's configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('CQRS_TEST_', 'DJANGO_', 'CELERY_')) and k not in {'PYTHONPATH'}}
    env['CQRS_FILESYSTEM_BROKER'] = str(broker_folder)
    return env


def run(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}')
    return result.stdout + result.stderr


def new_project(parent: Path, env: dict[str, str], name: str, app: str, settings: list[str],
                files: dict[str, str]) -> Path:
    """``django-admin startproject`` + ``startapp``, then the README's snippets written in."""
    folder = parent / name
    folder.mkdir()
    run(env, folder, '-m', 'django', 'startproject', name, '.')
    run(env, folder, 'manage.py', 'startapp', app)
    with (folder / name / 'settings.py').open('a') as handle:
        handle.write(f'\nINSTALLED_APPS += [{app!r}]\n')
        for block in settings:
            handle.write('\n' + block)
    for path, text in files.items():
        (folder / path).write_text(text)
    return folder


class Process:
    """A ``celery`` process started in a project folder, logging to a file."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str, *args: str) -> None:
        self.log = cwd.parent / f'{name}.log'
        with self.log.open('wb') as out:
            self.process = subprocess.Popen([sys.executable, '-m', 'celery', *args], env=env, cwd=cwd, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors='replace')

    def wait_for(self, marker: str, timeout: float = 90) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f'exited with {self.process.returncode}:\n{self.text()[-4000:]}', pytrace=False)
            return marker in self.text()

        wait_until(seen, timeout=timeout, message=lambda: f'{marker!r} in log:\n{self.text()[-4000:]}')

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def wait_stopped(self) -> None:
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:  # all at once: each warm shutdown takes seconds
        process.terminate()
    for process in processes:
        process.wait_stopped()


def rows(database: Path, query: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as connection:
        try:
            return connection.execute(query).fetchall()
        except sqlite3.OperationalError:  # table not there yet
            return []


def test_a_new_user_following_the_readme_replicates_on_the_first_try(tmp_path, started):
    env = user_env(tmp_path / 'broker')
    celery_py = readme_block('# proj/celery.py\n')
    shop = new_project(tmp_path, env, 'shop', 'library', [embedded_broker(readme_block('# shop/settings.py'))], {
        'shop/celery.py': celery_py.replace('proj', 'shop') + '\n' + readme_block('# proj/celery.py, after'),
        'shop/cqrs.py': readme_block('# shop/cqrs.py'),
        'library/models.py': readme_block('# library/models.py'),
    })
    billing = new_project(tmp_path, env, 'billing', 'catalog', [
        embedded_broker(readme_block('# billing/settings.py\n')), readme_block('# billing/settings.py, on SQLite'),
    ], {
        'billing/celery.py': celery_py.replace('proj', 'billing'),
        'catalog/models.py': '\n'.join([readme_block('# catalog/models.py (an app'),
                                         readme_block('# catalog/models.py (replica)')]),
    })

    # Master: makemigrations && migrate. Replica: the same, then declare its queue.
    for project, app in ((shop, 'library'), (billing, 'catalog')):
        run(env, project, 'manage.py', 'makemigrations', app)
        run(env, project, 'manage.py', 'migrate')
        checked = run(env, project, 'manage.py', 'check')
        assert 'cqrs_celery.' not in checked, checked
    run(env, billing, 'manage.py', 'cqrs_topology', '--declare')

    # A replica worker started without -Q says at once that it will apply nothing.
    forgotten = Process(env, billing, 'billing-without-q', '-A', 'billing', 'worker', '-c', '1', '--loglevel=INFO',
                        '-n', 'noq@%h')
    started.append(forgotten)
    forgotten.wait_for(' ready.')
    forgotten.wait_for('does not consume the replica queue billing')
    assert '-Q billing' in forgotten.text()
    forgotten.stop()

    # The README's processes, each from its own project folder.
    replica = Process(env, billing, 'billing-worker', '-A', 'billing', 'worker', '-Q', 'billing', '-c', '2',
                      '--loglevel=INFO', '-n', 'billing@%h')
    started.append(replica)
    replica.wait_for(' ready.')
    assert 'does not consume the replica queue' not in replica.text()
    master_worker = Process(env, shop, 'shop-worker', '-A', 'shop', 'worker', '-c', '2', '--loglevel=INFO',
                            '-n', 'shop@%h')
    started.append(master_worker)
    master_worker.wait_for(' ready.')
    beat = Process(env, shop, 'shop-beat', '-A', 'shop', 'beat', '--loglevel=INFO')
    started.append(beat)

    run(env, shop, 'manage.py', 'shell', '-c',
        "from library.models import Author, Book\n"
        "from shop.cqrs import changed_by\n"
        "token = changed_by.set('ann')\n"
        "author = Author.objects.create(name='Frank Herbert')\n"
        "Book.objects.create(title='Dune', price='9.99', author=author)\n"
        "for n in range(ROWS):\n"
        "    Author.objects.create(name=f'author {n}')\n".replace('ROWS', str(MORE_AUTHORS)))

    replica_db = billing / 'db.sqlite3'
    wait_until(lambda: rows(replica_db, 'SELECT name, price, author_id FROM catalog_bookcopy'), timeout=90,
               message=lambda: f'the book on the replica; replica log:\n{replica.text()[-3000:]}')
    wait_until(lambda: rows(replica_db, 'SELECT COUNT(*) FROM catalog_authorcopy') == [(MORE_AUTHORS + 1,)],
               timeout=120, message=lambda: f'every author on the replica; replica log:\n{replica.text()[-3000:]}')
    [(author_id, name, who)] = rows(replica_db, "SELECT id, name, changed_by FROM catalog_authorcopy "
                                                "WHERE name = 'Frank Herbert'")
    assert who == 'ann'
    [(title, price, book_author)] = rows(replica_db, 'SELECT name, price, author_id FROM catalog_bookcopy')
    assert (title, str(price), book_author) == ('Dune', '9.99', author_id)
    # Two worker processes wrote to SQLite at once with the README's options: no lock errors, no retries.
    for process in (replica, master_worker):
        assert 'database is locked' not in process.text()
        assert 'apply failed' not in process.text() and 'dead letter' not in process.text()
        assert 'Traceback' not in process.text(), process.text()[-3000:]
