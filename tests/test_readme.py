"""The README's Python snippets run as written (issue 9, point 6): each compiles, names nothing it
does not define or import (continuation snippets may use what the snippet they continue defines),
and the self-contained ones execute. Leaving ``cqrs_celery`` out of ``INSTALLED_APPS`` gives our
error, naming the fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]

#: Names a snippet may use without defining them: it continues a file the user already has
#: (``settings.py`` defines INSTALLED_APPS and DATABASES; ``celery.py`` defines ``app``).
CONTINUED = {'INSTALLED_APPS': [], 'DATABASES': {'default': {'ENGINE': 'django.db.backends.sqlite3'}}, 'app': None}


def readme_snippets(path: Path = ROOT / 'README.md') -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = path.read_text()
    found = []
    for match in re.finditer(r'^```python\n(.*?)^```', text, flags=re.M | re.S):
        found.append((text.count('\n', 0, match.start()) + 2, match.group(1)))
    return found


SNIPPETS = readme_snippets()


def snippet_id(snippet: tuple[int, str]) -> str:
    line, code = snippet
    first = code.splitlines()[0]
    return f'line{line}:{first.lstrip("# ")[:40]}' if first.startswith('#') else f'line{line}'


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 8


@pytest.mark.parametrize('snippet', SNIPPETS, ids=[snippet_id(s) for s in SNIPPETS])
def test_each_readme_snippet_compiles(snippet):
    line, code = snippet
    compile(code, f'README.md:{line}', 'exec')


def test_no_readme_snippet_uses_a_name_it_does_not_define_or_import(tmp_path):
    header = ''.join(f'{name} = {value!r}\n' for name, value in CONTINUED.items())
    for line, code in SNIPPETS:
        (tmp_path / f'snippet_line{line}.py').write_text(header + code)
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '--isolated', '--select', 'F821',
                             '--output-format', 'concise', str(tmp_path)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, f'undefined names in README snippets:\n{result.stdout}{result.stderr}'


def is_self_contained(code: str) -> bool:
    """Snippets that need no project of their own: no models, no Django test machinery."""
    return 'models.' not in code and 'apply_in_process' not in code


@pytest.mark.parametrize('snippet', [s for s in SNIPPETS if is_self_contained(s[1])],
                         ids=[snippet_id(s) for s in SNIPPETS if is_self_contained(s[1])])
def test_each_self_contained_readme_snippet_runs(snippet):
    line, code = snippet
    namespace = {name: (value.copy() if hasattr(value, 'copy') else value) for name, value in CONTINUED.items()}
    namespace['__name__'] = 'readme_snippet'
    namespace['app'] = Celery('readme', set_as_current=False)  # what celery.py created

    exec(compile(code, f'README.md:{line}', 'exec'), namespace)


def test_the_metadata_function_of_the_readme_returns_who_changed_the_row():
    [(_, code)] = [s for s in SNIPPETS if s[1].startswith('# shop/cqrs.py')]
    namespace: dict = {}
    exec(compile(code, 'shop/cqrs.py', 'exec'), namespace)

    token = namespace['changed_by'].set('ann')
    try:
        meta = namespace['change_meta'](instance=object(), signal_type='SAVE')
        assert meta == {'tenant': 'acme', 'changed_by': 'ann'}
    finally:
        namespace['changed_by'].reset(token)


def test_leaving_cqrs_celery_out_of_installed_apps_names_the_fix(tmp_path):
    (tmp_path / 'no_cqrs_settings.py').write_text(
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'tests.master_app']\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}\n"
        "CQRS = {'app': 'tests.celery_app.app'}\n"
    )
    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'no_cqrs_settings',
           'PYTHONPATH': os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, '-c', 'import django; django.setup()'], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('django.core.exceptions.ImproperlyConfigured: cqrs_celery is not in INSTALLED_APPS')
    assert "add 'cqrs_celery' to INSTALLED_APPS" in last
    assert 'app_label' not in result.stderr
