"""Django app config: every receiver and check is wired here, nothing at import time."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed


class CQRSCeleryConfig(AppConfig):
    name = 'cqrs_celery'
    verbose_name = 'CQRS (Celery)'
    default_auto_field = 'django.db.models.BigAutoField'

    def ready(self) -> None:
        from celery.signals import beat_init, celeryd_init, worker_init, worker_ready
        from django.db.models.signals import post_migrate

        from cqrs_celery import (
            beat,  # noqa: F401  (registers the periodic tasks)
            bootstrap,  # (also registers the first-run sync task)
        )
        from cqrs_celery import checks as cqrs_checks
        from cqrs_celery.conf import reset_settings
        from cqrs_celery.master import signals as master_signals
        from cqrs_celery.master import triggers
        from cqrs_celery.reconcile import tasks as reconcile_tasks  # noqa: F401  (registers its Celery tasks)
        from cqrs_celery.replica import queues, tasks  # noqa: F401  (registers the Celery task)

        setting_changed.connect(reset_settings, dispatch_uid='cqrs_celery.reset_settings')
        master_signals.connect()
        post_migrate.connect(triggers.on_post_migrate, dispatch_uid='cqrs_celery.outbox_triggers')
        celeryd_init.connect(queues.on_celeryd_init, dispatch_uid='cqrs_celery.celeryd_init', weak=False)
        worker_init.connect(queues.on_worker_init, dispatch_uid='cqrs_celery.worker_init', weak=False)
        worker_ready.connect(bootstrap.on_worker_ready, dispatch_uid='cqrs_celery.bootstrap', weak=False)
        beat_init.connect(queues.on_beat_init, dispatch_uid='cqrs_celery.beat_init', weak=False)
        worker_ready.connect(queues.on_worker_ready, dispatch_uid='cqrs_celery.worker_ready', weak=False)
        _configure_broker()
        checks.register(cqrs_checks.check_settings, 'cqrs_celery')
        checks.register(cqrs_checks.check_models, 'cqrs_celery', checks.Tags.models)
        checks.register(cqrs_checks.check_sqlite_replica, 'cqrs_celery')
        checks.register(cqrs_checks.check_migration_imports, 'cqrs_celery', checks.Tags.compatibility)


def _configure_broker() -> None:
    """``filesystem://``: shared folders for every process (web, worker, beat, commands) of the project.

    Resolving the Celery app here is harmless when it cannot be done yet (a broken ``CQRS['app']``
    is reported by the system checks; the app is configured again when the library first uses it).
    """
    from cqrs_celery.conf import get_settings

    try:
        app = get_settings().celery_app()
    except Exception:  # reported by check_settings (E001-E005) with a hint
        return
    _prepare_publishing(app)


def _prepare_publishing(app: object) -> None:
    """A master service that publishes from its own processes loads its publishing machinery now
    (``producer.prepare``), not at its first publish; nothing connects, and a failure is left for
    the first publish to report."""
    from cqrs_celery.conf import get_settings
    from cqrs_celery.registry import MasterRegistry

    try:
        master = get_settings().master
        if not MasterRegistry.models() or (master.outbox and master.publisher == 'relay'):
            return
        from cqrs_celery.master import outbox, publisher  # noqa: F401  (what the first drain would import)
        from cqrs_celery.producer import prepare

        prepare(app)
    except Exception:  # the first publish reports it, with its context
        pass
