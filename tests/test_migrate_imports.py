"""Migrations that django-cqrs's makemigrations wrote: check W030/E030 and ``cqrs_migrate_imports`` (issue 10)."""

import shutil
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cqrs_celery import checks, migration_imports

#: A replica migration exactly as django-cqrs 3.1.0's makemigrations wrote it.
GENERATED = Path(__file__).parent / 'djcqrs_project' / 'shop_replica' / 'migrations' / '0001_initial.py'


@pytest.fixture
def django_cqrs_migrations(tmp_path, settings, monkeypatch):
    """The replica app's migrations replaced by a package holding django-cqrs's generated migration."""
    package = tmp_path / 'compat_generated_migrations'
    package.mkdir()
    (package / '__init__.py').write_text('')
    shutil.copy(GENERATED, package / '0001_initial.py')
    monkeypatch.syspath_prepend(str(tmp_path))
    settings.MIGRATION_MODULES = {'replica_app': 'compat_generated_migrations'}
    yield package / '0001_initial.py'
    sys.modules.pop('compat_generated_migrations', None)


def test_the_generated_migration_imports_django_cqrs_as_makemigrations_writes_it():
    text = GENERATED.read_text()
    assert 'import dj_cqrs.mixins\n' in text
    assert 'bases=(dj_cqrs.mixins.RawReplicaMixin, models.Model)' in text


def test_check_e030_names_the_migration_and_the_command_when_django_cqrs_is_gone(django_cqrs_migrations):
    [message] = checks.check_migration_imports()

    assert message.id == 'cqrs_celery.E030'
    assert 'replica_app/0001_initial.py' in message.msg
    assert 'cqrs_migrate_imports' in message.hint


def test_check_w030_while_django_cqrs_is_still_installed(django_cqrs_migrations, monkeypatch):
    monkeypatch.setattr(migration_imports, 'django_cqrs_installed', lambda: True)

    assert [m.id for m in checks.check_migration_imports()] == ['cqrs_celery.W030']


def test_no_message_for_a_project_without_django_cqrs_migrations():
    assert checks.check_migration_imports() == []


def test_dry_run_and_check_write_nothing(django_cqrs_migrations, capsys):
    before = django_cqrs_migrations.read_text()

    call_command('cqrs_migrate_imports', '--dry-run')
    assert 'would rewrite' in capsys.readouterr().out
    with pytest.raises(CommandError, match='cqrs_migrate_imports'):
        call_command('cqrs_migrate_imports', '--check')

    assert django_cqrs_migrations.read_text() == before


def test_the_command_rewrites_only_the_module_path_and_the_migration_loads(django_cqrs_migrations, capsys):
    before = django_cqrs_migrations.read_text()

    call_command('cqrs_migrate_imports')

    after = django_cqrs_migrations.read_text()
    assert 'rewrote' in capsys.readouterr().out
    assert after == before.replace('dj_cqrs.mixins', 'cqrs_celery.mixins')
    assert 'bases=(cqrs_celery.mixins.RawReplicaMixin, models.Model)' in after
    call_command('cqrs_migrate_imports', '--check')
    assert checks.check_migration_imports() == []
    namespace: dict = {}
    exec(compile(after, str(django_cqrs_migrations), 'exec'), namespace)  # imports resolve now
    assert namespace['Migration'].operations


def test_a_reference_beyond_the_mixins_is_reported_for_a_hand_fix(django_cqrs_migrations, capsys):
    django_cqrs_migrations.write_text(django_cqrs_migrations.read_text() + '\nimport dj_cqrs.transport\n')

    with pytest.raises(CommandError, match='by hand'):
        call_command('cqrs_migrate_imports')

    assert 'import dj_cqrs.transport' in capsys.readouterr().err
    assert 'cqrs_celery.mixins.RawReplicaMixin' in django_cqrs_migrations.read_text()
