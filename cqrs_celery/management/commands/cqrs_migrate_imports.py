"""Rewrite ``dj_cqrs.mixins`` to ``cqrs_celery.mixins`` in this project's migration files."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cqrs_celery import migration_imports


class Command(BaseCommand):
    help = ("Rewrite the django-cqrs imports (dj_cqrs.mixins) that makemigrations wrote into this project's "
            "migrations to cqrs_celery.mixins, so migrate keeps working once django-cqrs is removed.")
    # the check this command fixes (cqrs_celery.E030) must not stop it from running
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('app_label', nargs='*', help='Only these apps (default: every app of the project).')
        parser.add_argument('--dry-run', action='store_true', help='Show what would change; write nothing.')
        parser.add_argument('--check', action='store_true',
                            help='Write nothing; exit with an error when a migration still imports dj_cqrs (CI).')

    def handle(self, *args: Any, app_label: list[str], dry_run: bool = False, check: bool = False,
               **options: Any) -> None:
        try:
            found = migration_imports.find(app_label or None)
        except OSError as exc:
            raise CommandError(f'cannot read the migrations: {exc}') from exc
        if not found:
            self.stdout.write('No migration imports dj_cqrs.')
            return
        changed = 0
        for item in found:
            if item.rewritable:
                verb = 'would rewrite' if (dry_run or check) else 'rewrote'
                self.stdout.write(f'{verb} {item.path} ({item.app_label}): {item.rewritable} reference(s) to '
                                  f'{migration_imports.OLD_MODULE}')
                if not (dry_run or check):
                    item.path.write_text(item.rewritten(), encoding='utf-8')
                changed += 1
            for line in item.other:
                self.stderr.write(self.style.WARNING(f'{item.path}: fix by hand (no cqrs_celery equivalent): {line}'))
        if check:
            raise CommandError(f'{len(found)} migration file(s) import dj_cqrs; run '
                               f'"manage.py cqrs_migrate_imports" to rewrite them.')
        unresolved = [item for item in found if item.other]
        summary = f'{changed} file(s) {"to rewrite" if dry_run else "rewritten"}.'
        self.stdout.write(self.style.SUCCESS(summary) if not unresolved else summary)
        if unresolved and not dry_run:
            raise CommandError(f'{len(unresolved)} file(s) name dj_cqrs beyond dj_cqrs.mixins; edit them by hand.')
