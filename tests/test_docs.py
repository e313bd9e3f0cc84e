"""The documentation names every settings key and every system check that exists in the code."""

import re
from pathlib import Path

import pytest

from cqrs_celery.checks import CHECK_IDS
from cqrs_celery.conf import ALL_KEYS

DOCS = Path(__file__).resolve().parents[1] / 'docs'


def settings_doc() -> str:
    return (DOCS / 'settings.md').read_text()


@pytest.mark.parametrize('key', ALL_KEYS)
def test_every_settings_key_is_documented_in_the_settings_reference(key):
    name = key.split('.')[-1]
    assert f'| `{name}` |' in settings_doc(), f'{key} is missing from docs/settings.md'


def test_the_settings_reference_documents_no_key_that_does_not_exist():
    documented = set(re.findall(r'^\| `([A-Za-z_]+)` \|', settings_doc(), flags=re.M))
    assert documented == {key.split('.')[-1] for key in ALL_KEYS}


@pytest.mark.parametrize('check_id', sorted(CHECK_IDS))
def test_every_check_id_has_a_troubleshooting_entry(check_id):
    assert f'### {check_id} ' in (DOCS / 'troubleshooting.md').read_text()


def test_the_troubleshooting_page_lists_no_check_id_that_does_not_exist():
    found = set(re.findall(r'cqrs_celery\.[EW]\d{3}', (DOCS / 'troubleshooting.md').read_text()))
    assert found == set(CHECK_IDS)


def test_every_management_command_is_documented_in_operations():
    commands = DOCS.parent / 'cqrs_celery' / 'management' / 'commands'
    names = sorted(p.stem for p in commands.glob('cqrs_*.py'))
    operations = (DOCS / 'operations.md').read_text()
    assert names and all(f'`{name}' in operations for name in names)
