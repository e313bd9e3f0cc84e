"""Find and rewrite migrations that import django-cqrs's mixins (``dj_cqrs.mixins``).

``makemigrations`` under django-cqrs writes ``import dj_cqrs.mixins`` and
``bases=(dj_cqrs.mixins.RawReplicaMixin, models.Model)`` into a replica's migrations, so removing
django-cqrs breaks ``migrate``. cqrs_celery has the same classes under ``cqrs_celery.mixins``; the
rewrite changes only that module path. Used by the ``cqrs_migrate_imports`` command and check W030/E030.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path

from django.apps import apps
from django.db.migrations.loader import MigrationLoader

OLD_MODULE = 'dj_cqrs.mixins'
NEW_MODULE = 'cqrs_celery.mixins'
_OLD = re.compile(r'\bdj_cqrs\.mixins\b')
#: Any other reference to django-cqrs, which the rewrite cannot translate.
_OTHER = re.compile(r'\bdj_cqrs\b(?!\.mixins\b)')


@dataclasses.dataclass(frozen=True)
class MigrationFile:
    """A migration file of this project that names django-cqrs."""

    app_label: str
    path: Path
    rewritable: int  # references to dj_cqrs.mixins
    other: tuple[str, ...]  # lines naming dj_cqrs otherwise (to fix by hand)

    def rewritten(self) -> str:
        return _OLD.sub(NEW_MODULE, self.path.read_text(encoding='utf-8'))


def migration_dirs(app_labels: Iterable[str] | None = None) -> list[tuple[str, Path]]:
    """(app label, folder) of the migrations of the project's own apps (not installed packages)."""
    wanted = set(app_labels) if app_labels is not None else None
    found = []
    for config in apps.get_app_configs():
        if wanted is not None and config.label not in wanted:
            continue
        module, _explicit = MigrationLoader.migrations_module(config.label)
        if module is None:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            folder = Path(location)
            if not {'site-packages', 'dist-packages'} & set(folder.parts) and config.name != 'cqrs_celery':
                found.append((config.label, folder))
    return found


def find(app_labels: Iterable[str] | None = None) -> list[MigrationFile]:
    """Migration files that name ``dj_cqrs``, in app and file order."""
    result = []
    for label, folder in migration_dirs(app_labels):
        for path in sorted(folder.glob('*.py')):
            text = path.read_text(encoding='utf-8', errors='replace')
            if 'dj_cqrs' not in text:
                continue
            other = tuple(line.strip() for line in text.splitlines() if _OTHER.search(line))
            result.append(MigrationFile(label, path, len(_OLD.findall(text)), other))
    return result


def django_cqrs_installed() -> bool:
    try:
        return importlib.util.find_spec(OLD_MODULE) is not None
    except (ImportError, ValueError):
        return False
