"""Django system checks with stable ids (``cqrs_celery.E001``…); each hint says what to do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.core import checks
from django.utils.module_loading import import_string

from cqrs_celery import conf, migration_imports
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry
from cqrs_celery.serialization import field_for_key

#: Every check id with a one-line summary; the docs list exactly these.
CHECK_IDS = {
    'cqrs_celery.E001': 'The CQRS setting is missing or is not a dict.',
    'cqrs_celery.E002': "CQRS['app'] is not set.",
    'cqrs_celery.E003': "CQRS['app'] cannot be imported or is not a Celery app.",
    'cqrs_celery.E004': 'Unknown key in CQRS, CQRS[\'master\'] or CQRS[\'replica\'].',
    'cqrs_celery.E005': 'A CQRS value has the wrong type.',
    'cqrs_celery.E006': "Replica models are declared but CQRS['queue'] is not set.",
    'cqrs_celery.E007': "CQRS['queue'] is not a valid queue name.",
    'cqrs_celery.E008': 'correlation_function or meta_function cannot be imported or is not callable.',
    'cqrs_celery.E009': 'Two models of one side share a CQRS_ID.',
    'cqrs_celery.E020': 'CQRS_FIELDS does not name the primary key.',
    'cqrs_celery.E021': 'CQRS_FIELDS, CQRS_TRACKED_FIELDS or CQRS_MAPPING names a field twice.',
    'cqrs_celery.E022': 'CQRS_FIELDS is set together with CQRS_SERIALIZER.',
    'cqrs_celery.E023': "CQRS_MAPPING does not map anything to the replica's primary key.",
    'cqrs_celery.W020': "A django-cqrs connection setting (transport, url, host, exchange…) is ignored.",
    'cqrs_celery.W021': 'A django-cqrs consumer setting (delay_queue_max_size, consumer_prefetch_count) is ignored.',
    'cqrs_celery.W022': 'A django-cqrs query-timeout setting (CQRS_QUERY_TIMEOUT…) is ignored.',
    'cqrs_celery.E010': 'CQRS_MAPPING names a field the replica model does not have.',
    'cqrs_celery.E011': 'CQRS_FIELDS or CQRS_TRACKED_FIELDS names a field the master model does not have.',
    'cqrs_celery.E012': 'CQRS_SERIALIZER cannot be imported.',
    'cqrs_celery.E013': "CQRS['replica']['dead_letter_queue'] is the replica queue itself, or another queue workers "
                        'consume.',
    'cqrs_celery.E014': 'The Celery app sends task protocol 1 messages, which replicas refuse.',
    'cqrs_celery.W001': 'The Celery app accepts pickle.',
    'cqrs_celery.W030': 'A migration imports dj_cqrs.mixins (django-cqrs); it breaks once django-cqrs is removed.',
    'cqrs_celery.E030': 'A migration imports dj_cqrs.mixins but django-cqrs is not installed: migrate fails.',
    'cqrs_celery.W060': "CQRS['replica']['queue_type'] is 'quorum' but the broker is not RabbitMQ.",
    'cqrs_celery.W040': 'The filesystem broker uses a relative folder (each working directory gets its own broker).',
    'cqrs_celery.W041': 'The filesystem broker reads messages from another folder than the one it writes them to.',
    'cqrs_celery.W042': 'A replica model writes to SQLite without IMMEDIATE transactions (database is locked).',
}

#: Broker URL schemes of RabbitMQ (where queue types exist).
AMQP_SCHEMES = frozenset({'amqp', 'amqps', 'pyamqp', 'librabbitmq'})

#: Content types that let a message run code when it is decoded.
UNSAFE_CONTENT = frozenset({'pickle', 'application/x-python-serialize'})


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Problems with the ``CQRS`` setting itself."""
    problems = conf.validate(conf.raw_setting())
    errors: list[checks.CheckMessage] = [checks.Error(p.msg, hint=p.hint, id=p.id) for p in problems if p.is_error]
    warnings: list[checks.CheckMessage] = [
        checks.Warning(p.msg, hint=p.hint, id=p.id) for p in problems if not p.is_error]
    raw = conf.raw_setting()
    if ReplicaRegistry.ids() and not (isinstance(raw, Mapping) and raw.get('queue')):
        errors.append(checks.Error(
            f"Replica models ({', '.join(ReplicaRegistry.ids())}) are declared but CQRS['queue'] is not set.",
            hint="Set CQRS['queue'] to a name unique to this replica service, e.g. 'billing_replica'.",
            id='cqrs_celery.E006',
        ))
    if not errors:
        errors.extend(_check_celery_app(conf.get_settings()))
    return warnings + errors


def _check_celery_app(settings: conf.CQRSSettings) -> list[checks.CheckMessage]:
    """What the project's Celery app is configured to do with the messages cqrs_celery exchanges."""
    messages: list[checks.CheckMessage] = []
    app = settings.celery_app()
    if getattr(app, 'conf', None) is None:
        return messages
    accept = app.conf.accept_content or ()
    accepted = {str(name).lower() for name in ([accept] if isinstance(accept, str) else accept
                                                if isinstance(accept, list | tuple | set | frozenset) else ())}
    if accepted & UNSAFE_CONTENT:
        messages.append(checks.Warning(
            'The Celery app accepts pickle (accept_content): any message on one of its queues can run code '
            'in the worker. Replica queues refuse every body that is not JSON, but other queues do not.',
            hint="Set CELERY_ACCEPT_CONTENT = ['json'] unless a task of yours truly needs pickle.",
            id='cqrs_celery.W001',
        ))
    scheme = str(app.conf.broker_url or 'amqp://').split('://', 1)[0].split('+', 1)[0].lower()
    if settings.replica.queue_type != 'classic' and scheme not in AMQP_SCHEMES:
        messages.append(checks.Warning(
            f"CQRS['replica']['queue_type'] is {settings.replica.queue_type!r}, but the Celery app's broker is "
            f'{scheme}://, which has no queue types: the setting is ignored.',
            hint="Remove queue_type (or set 'classic'); quorum queues need RabbitMQ.",
            id='cqrs_celery.W060',
        ))
    default_queue = str(app.conf.task_default_queue or 'celery')
    if settings.dead_letter_queue == default_queue:
        messages.append(checks.Error(
            f"CQRS['replica']['dead_letter_queue'] is {default_queue!r}, the Celery app's default queue: its "
            'workers would take the dead letters and drop them.',
            hint='Leave dead_letter_queue out (dead_letter_<queue>) or give a name of its own.',
            id='cqrs_celery.E013',
        ))
    messages.extend(_check_filesystem_broker(app))
    if not _protocol_2(app.conf.task_protocol):
        messages.append(checks.Error(
            f'The Celery app sends task protocol {app.conf.task_protocol} messages; replica queues accept '
            'protocol 2 only and would dead-letter every envelope.',
            hint='Remove task_protocol from the Celery configuration (2 is the default).',
            id='cqrs_celery.E014',
        ))
    return messages


def _protocol_2(value: Any) -> bool:
    """True for Celery's task protocol 2 (``None``: the default, 2)."""
    try:
        return value is None or int(value) >= 2
    except (TypeError, ValueError):
        return False


def _check_filesystem_broker(app: Any) -> list[checks.CheckMessage]:
    """``filesystem://``: every project must name the same absolute folders, or they never meet."""
    from cqrs_celery import filesystem

    if not filesystem.is_filesystem(app):
        return []
    messages: list[checks.CheckMessage] = []
    folders = filesystem.folders(app)
    relative = {key: path for key, path in folders.items() if not os.path.isabs(path)}
    if relative:
        shown = ', '.join(f'{key}={path!r}' for key, path in relative.items())
        messages.append(checks.Warning(
            f'The filesystem broker uses relative folders ({shown}): they depend on the directory each '
            'process starts in, so a master and a replica started in their own project folders never see '
            "each other's messages.",
            hint='Remove the folder keys from CELERY_BROKER_TRANSPORT_OPTIONS to use the shared default '
                 f'({filesystem.default_folder()}, or $CQRS_FILESYSTEM_BROKER), or give absolute paths, the '
                 'same in every project.',
            id='cqrs_celery.W040',
        ))
    if os.path.abspath(folders['data_folder_in']) != os.path.abspath(folders['data_folder_out']):
        messages.append(checks.Warning(
            f"The filesystem broker writes messages to {folders['data_folder_out']!r} but reads them from "
            f"{folders['data_folder_in']!r}: this project's own messages (retries, beat tasks) never reach "
            'its workers, and other projects must cross their folders exactly.',
            hint='Give data_folder_in and data_folder_out the same absolute folder in every project.',
            id='cqrs_celery.W041',
        ))
    return messages


def check_sqlite_replica(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Replica models on SQLite need IMMEDIATE transactions for a worker with more than one process.

    Two worker processes that both start a deferred transaction and then write make SQLite refuse
    one of them at once with ``database is locked`` (no busy timeout helps with that): retries,
    then dead letters.
    """
    import django
    from django.db import connections, router

    raw = conf.raw_setting()
    if not (ReplicaRegistry.ids() and isinstance(raw, Mapping) and raw.get('queue')):
        return []
    aliases = sorted({router.db_for_write(model) or 'default' for model in ReplicaRegistry.models()
                      if getattr(model, '_meta', None) is not None})
    messages: list[checks.CheckMessage] = []
    for alias in aliases:
        if alias not in connections.settings:
            continue
        database = connections.settings[alias]
        name = str(database.get('NAME') or '')
        if database.get('ENGINE') != 'django.db.backends.sqlite3' or name == ':memory:' or 'mode=memory' in name:
            continue
        options = database.get('OPTIONS') or {}
        if str(options.get('transaction_mode', '')).upper() == 'IMMEDIATE':
            continue
        if django.VERSION >= (5, 1):
            hint = (f"Set DATABASES[{alias!r}]['OPTIONS'] = {{'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
                    "'init_command': 'PRAGMA journal_mode=WAL;'}} (as example_replica does), or use PostgreSQL.")
        else:
            hint = 'Run the replica worker with -c 1 on SQLite (Django 5.1 adds transaction_mode), or use PostgreSQL.'
        messages.append(checks.Warning(
            f'Replica models write to SQLite database {alias!r} without transaction_mode IMMEDIATE: a worker '
            "with more than one process (celery worker -c 2) fails with 'database is locked', retries and "
            'dead-letters changes.',
            hint=hint, id='cqrs_celery.W042',
        ))
    return messages


def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Problems with master and replica model declarations."""
    errors: list[checks.CheckMessage] = []
    for registry in (MasterRegistry, ReplicaRegistry):
        for cqrs_id, models in registry.duplicates().items():
            labels = ', '.join(_label(m) for m in models)
            errors.append(checks.Error(
                f'CQRS_ID {cqrs_id!r} is used by more than one {registry.side} model: {labels}.',
                hint='Give each model its own CQRS_ID; a replica names the id of the master it copies.',
                obj=models[-1], id='cqrs_celery.E009',
            ))
    for model in MasterRegistry.models():
        errors.extend(_check_master(model))
        errors.extend(_check_master_like_django_cqrs(model))
    for model in ReplicaRegistry.models():
        errors.extend(_check_mapping(model))
        errors.extend(_check_mapping_like_django_cqrs(model))
    return errors


def _duplicates(names: Any) -> list[Any]:
    seen: set[Any] = set()
    return sorted({n for n in names if n in seen or seen.add(n)}, key=repr)  # type: ignore[func-returns-value]


def _check_master_like_django_cqrs(model: Any) -> list[checks.CheckMessage]:
    """Declarations django-cqrs refuses (with an assert at import) and cqrs_celery reports here."""
    errors: list[checks.CheckMessage] = []
    label, fields = model._meta.label, model.CQRS_FIELDS
    explicit_fields = fields not in (None, '__all__') and not isinstance(fields, str)
    if explicit_fields and model.CQRS_SERIALIZER:
        errors.append(checks.Error(
            f'{label} sets both CQRS_FIELDS and CQRS_SERIALIZER; the serializer decides what is sent.',
            hint='Remove CQRS_FIELDS (list the fields in the serializer) or remove CQRS_SERIALIZER.',
            obj=model, id='cqrs_celery.E022',
        ))
    elif explicit_fields and model._meta.pk.name not in set(fields):
        errors.append(checks.Error(
            f'{label}.CQRS_FIELDS does not name the primary key {model._meta.pk.name!r}.',
            hint=f'Add {model._meta.pk.name!r} to CQRS_FIELDS: replicas find their row by it.',
            obj=model, id='cqrs_celery.E020',
        ))
    for attr in ('CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'):
        value = getattr(model, attr)
        if value in (None, '__all__') or isinstance(value, str):
            continue
        for name in _duplicates(list(value)):
            errors.append(checks.Error(
                f'{label}.{attr} names {name!r} more than once.',
                hint='List each field once.', obj=model, id='cqrs_celery.E021',
            ))
    return errors


def _check_mapping_like_django_cqrs(model: Any) -> list[checks.CheckMessage]:
    mapping = getattr(model, 'CQRS_MAPPING', None)
    meta = getattr(model, '_meta', None)
    if not isinstance(mapping, Mapping) or meta is None or meta.pk is None:
        return []
    errors: list[checks.CheckMessage] = []
    targets = list(mapping.values())
    for name in _duplicates(targets):
        errors.append(checks.Error(
            f'{meta.label}.CQRS_MAPPING maps more than one master field to {name!r}.',
            hint='Map each replica field from one master field.', obj=model, id='cqrs_celery.E021',
        ))
    if meta.pk.name not in targets and meta.pk.attname not in targets:
        errors.append(checks.Error(
            f'{meta.label}.CQRS_MAPPING maps no master field to the primary key {meta.pk.name!r}.',
            hint=f'Add the master\'s primary key to the mapping, e.g. {{"id": {meta.pk.name!r}, ...}}.',
            obj=model, id='cqrs_celery.E023',
        ))
    return errors


def _label(model: Any) -> str:
    meta = getattr(model, '_meta', None)
    return meta.label if meta is not None else f'{model.__module__}.{model.__qualname__}'


def _check_master(model: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    names = {f.name for f in model._meta.concrete_fields}
    for attr in ('CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'):
        value = getattr(model, attr)
        if value in (None, '__all__'):
            continue
        for name in sorted(set(value) - names):
            errors.append(checks.Error(
                f'{model._meta.label}.{attr} names {name!r}, which is not a concrete field of the model.',
                hint=f'Use field names of {model._meta.label}: {", ".join(sorted(names))}.',
                obj=model, id='cqrs_celery.E011',
            ))
    if model.CQRS_SERIALIZER:
        try:
            import_string(model.CQRS_SERIALIZER)
        except ImportError as exc:
            errors.append(checks.Error(
                f'{model._meta.label}.CQRS_SERIALIZER = {model.CQRS_SERIALIZER!r} cannot be imported: {exc}.',
                hint='Give the dotted path of a serializer class, e.g. "app.serializers.BookSerializer".',
                obj=model, id='cqrs_celery.E012',
            ))
    return errors


def _check_mapping(model: Any) -> list[checks.CheckMessage]:
    mapping = getattr(model, 'CQRS_MAPPING', None)
    if not mapping or model.CQRS_CUSTOM_SERIALIZATION:
        return []
    errors: list[checks.CheckMessage] = []
    for source, target in mapping.items():
        if not isinstance(source, str) or not isinstance(target, str):
            problem = f'maps {source!r} to {target!r}; both must be field names (strings)'
        elif field_for_key(model, target) is None:
            problem = f'maps {source!r} to {target!r}, which is not a field of the model'
        else:
            continue
        errors.append(checks.Error(
            f'{model._meta.label}.CQRS_MAPPING {problem}.',
            hint='Write CQRS_MAPPING = {"master_field": "replica_field", ...} with fields of this model.',
            obj=model, id='cqrs_celery.E010',
        ))
    return errors


def check_migration_imports(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Migrations written under django-cqrs that still import ``dj_cqrs.mixins``."""
    labels = [config.label for config in app_configs] if app_configs else None
    found = migration_imports.find(labels)
    if not found:
        return []
    installed = migration_imports.django_cqrs_installed()
    names = ', '.join(f'{item.app_label}/{item.path.name}' for item in found)
    hint = ('Run "python manage.py cqrs_migrate_imports" (it rewrites dj_cqrs.mixins to cqrs_celery.mixins; '
            '--dry-run shows the changes first) and commit the rewritten migrations.')
    if installed:
        return [checks.Warning(f'{len(found)} migration(s) import dj_cqrs.mixins: {names}. migrate will fail '
                               'once django-cqrs is uninstalled.', hint=hint, id='cqrs_celery.W030')]
    return [checks.Error(f'{len(found)} migration(s) import dj_cqrs.mixins, and django-cqrs is not installed: '
                         f'{names}. migrate fails.', hint=hint, id='cqrs_celery.E030')]
