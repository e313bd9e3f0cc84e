"""The code passes the project's own checks: ruff on the code and examples, strict mypy on the library.

Both tools come with the test extra (``pip install -e ".[test]"``); they run with this interpreter
from the repository root, so the configuration in pyproject.toml applies.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Everything ruff checks; directories that do not exist in this checkout are left out.
LINTED = ('cqrs_celery', 'tests', 'benchmarks', 'example_master', 'example_replica')


def run_tool(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f'{module} is not installed in {sys.executable}: install the test extra '
                    f'(pip install -e ".[test]")', pytrace=False)
    proc = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (
        f'{module} {" ".join(args)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}'
    )


def test_ruff_finds_nothing():
    run_tool('ruff', 'check', *[name for name in LINTED if (ROOT / name).is_dir()])


def test_mypy_strict_finds_nothing_in_the_library():
    run_tool('mypy', 'cqrs_celery')
