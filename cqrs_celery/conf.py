"""The ``CQRS`` setting, read once into a frozen, typed object and rebuilt on ``setting_changed``.

No other module reads ``django.conf.settings`` for CQRS values: they call :func:`get_settings`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from celery import Celery
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from cqrs_celery import filesystem, topology
from cqrs_celery.exceptions import ConfigurationError

#: Values of ``CQRS['master']['publisher']``.
PUBLISHER_MODES = ('thread', 'inline', 'relay')

#: Values of ``CQRS['replica']['queue_type']`` (RabbitMQ queue types of the replica and dead-letter queues).
QUEUE_TYPES = ('classic', 'quorum')

#: Replica queue names: letters, digits and ``._-:``; they become broker names.
QUEUE_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:-]{0,199}')


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the ``CQRS`` setting, reported as a system check."""

    id: str
    msg: str
    hint: str
    #: ``'error'`` (the setting cannot be used) or ``'warning'`` (it can; something in it is ignored).
    level: str = 'error'

    @property
    def is_error(self) -> bool:
        return self.level == 'error'


@dataclasses.dataclass(frozen=True)
class MasterSettings:
    """``CQRS['master']``: how the owning service publishes."""

    #: Every ``save(update_fields=...)`` bumps the revision and publishes, even when only
    #: fields that are not replicated changed.
    auto_update_fields: bool = False
    #: Seconds an envelope stays valid; replicas drop expired envelopes unapplied. ``None``: forever.
    message_ttl: int | None = None
    #: Called at publish time as django-cqrs calls it, ``f(signal_type, cqrs_id, instance_pk, queue)``
    #: (a function taking fewer arguments gets those it names); its result travels as ``correlation_id``.
    correlation_function: Callable[..., Any] | None = None
    #: Called as ``f(obj=instance, instance_data=…, previous_data=…, signal_type=…)`` (django-cqrs's
    #: keywords; ``instance=`` too if it names it); its dict is the metadata.
    meta_function: Callable[..., Mapping[str, Any]] | None = None
    #: Write each event to the outbox table in the change's own transaction (nothing committed is
    #: ever lost); off: publish after commit and only log a failed publish.
    outbox: bool = True
    #: Seconds a publish may take after commit (connect + confirm) before it is left to the relay.
    publish_timeout: float = 2.0
    #: Outbox rows the relay publishes per run.
    outbox_relay_batch: int = 500
    #: Seconds an outbox row must wait before the relay takes it (the committing process goes first).
    outbox_relay_delay: float = 2.0
    #: Who publishes committed events: ``'thread'`` (a background thread of the committing process,
    #: woken at commit), ``'inline'`` (the committing thread, right after commit) or ``'relay'``
    #: (only the beat relay / ``cqrs_outbox relay``).
    publisher: str = 'thread'
    #: Rows of one CQRS_ID per published message (a batch envelope).
    publish_batch_size: int = 500
    #: Failed publish attempts after which an outbox event is set aside (a broker outage does not count).
    outbox_max_attempts: int = 50
    #: Seconds the master remembers the revision of a deleted pk (outlive the replicas' tombstones).
    tombstone_retention: int = 90 * 24 * 3600
    #: Rows per repair message a reconciliation sends to a replica (a batch envelope).
    reconcile_batch_size: int = 100
    #: Seconds a reconciliation waits between two repair messages, so live changes go first.
    reconcile_pause: float = 0.05
    #: Seconds between two reconciliations of one CQRS_ID with one replica queue (more frequent
    #: requests, e.g. from a second beat, are ignored).
    reconcile_min_interval: float = 30.0
    #: Queue the master's worker consumes first-run sync requests of replicas from (bound to the
    #: ``cqrs_bootstrap`` exchange at worker start); ``None``: the Celery app's default queue.
    bootstrap_queue: str | None = None
    #: Seconds after a master change during which a reconciliation leaves the row alone: its own
    #: message is on its way (the next run checks it again).
    reconcile_grace: float = 10.0


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """``CQRS['replica']``: how a replica service applies."""

    #: Attempts after the first one before an envelope goes to the dead-letter queue
    #: (``CQRS_MAX_RETRIES = None``: retry for ever, kept here as ``math.inf``).
    max_retries: float = 30
    #: Seconds before the first retry.
    retry_delay: float = 2
    #: Each retry waits this many times longer than the one before (1: constant delay).
    retry_backoff: float = 2.0
    #: Longest wait between retries, in seconds (kept below the Redis visibility timeout).
    retry_backoff_max: float = 300
    #: Randomise each delay between half and all of its value, so retries do not stampede.
    retry_jitter: bool = True
    #: Dead-letter queue of this service; ``None``: ``dead_letter_<queue>``.
    dead_letter_queue: str | None = None
    #: Seconds a dead letter is kept (RabbitMQ: x-message-ttl; other brokers: dropped by the purge
    #: of expired dead letters); ``None``: forever.
    dead_message_ttl: int | None = 864000
    #: Redis only, when the Celery app sets none: seconds before a killed worker's unacknowledged
    #: messages are delivered again.
    visibility_timeout: int = 60
    #: Seconds a replica remembers a deleted row's revision (late SAVEs older than that can resurrect).
    tombstone_retention: int = 30 * 24 * 3600
    #: Largest task message body (bytes) a replica queue accepts; a larger one is a dead letter,
    #: refused before it is decoded.
    max_message_size: int = 16 * 1024 * 1024
    #: Deepest nesting of JSON arrays and objects in a task message body, counted from the body's
    #: outer array (the envelope itself takes four levels); a deeper one is a dead letter, refused
    #: before it is decoded.
    max_nesting_depth: int = 100
    #: Reconcile this service's replica models with their masters when beat asks (models opt out
    #: with ``CQRS_RECONCILE = False``).
    reconcile: bool = True
    #: Queue the master's worker consumes for reconciliation requests: one name, a dict
    #: ``{CQRS_ID: queue}`` (key ``'*'`` for the others), or ``None`` for Celery's default queue.
    reconcile_master_queue: str | Mapping[str, str] | None = None

    def master_queue(self, cqrs_id: str) -> str | None:
        """The queue of the master worker that reconciles ``cqrs_id`` (``None``: Celery's default)."""
        queue = self.reconcile_master_queue
        if isinstance(queue, Mapping):
            return queue.get(cqrs_id, queue.get('*'))
        return queue
    #: At worker start, ask the master for a full directed sync of every replicated model whose
    #: table is empty and which never received anything (a replica deployed after its master).
    bootstrap: bool = True
    #: RabbitMQ type of the replica and dead-letter queues: ``'classic'`` or ``'quorum'``.
    queue_type: str = 'classic'
    #: Quorum queues: deliveries of one message (worker crashes) before it goes to the dead-letter queue.
    delivery_limit: int = 10
    #: Most rows a worker applies in one go: a task takes messages waiting in its queue along with its
    #: own, up to this many rows, and applies them together (0 or 1: one message at a time).
    group_rows: int = 500


@dataclasses.dataclass(frozen=True)
class CQRSSettings:
    """The whole ``CQRS`` setting, typed, with every default in one place."""

    app: Any = None
    queue: str | None = None
    master: MasterSettings = dataclasses.field(default_factory=MasterSettings)
    replica: ReplicaSettings = dataclasses.field(default_factory=ReplicaSettings)

    def celery_app(self) -> Any:
        """The project's Celery app (``CQRS['app']`` resolved if it is a dotted path)."""
        if self.app is None:
            raise ConfigurationError(
                "CQRS['app'] is not set: point it at your Celery app, e.g. 'proj.celery.app'."
            )
        app = _resolve_app(self.app) if isinstance(self.app, str) else self.app
        filesystem.configure(app)  # filesystem://: shared folders before any connection (cheap after once)
        return app

    @property
    def dead_letter_queue(self) -> str | None:
        """This replica service's dead-letter queue name."""
        if self.replica.dead_letter_queue:
            return self.replica.dead_letter_queue
        return topology.dead_letter_queue_name(self.queue) if self.queue else None


# key -> (attribute on the typed object, accepted types)
_MASTER_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    'CQRS_AUTO_UPDATE_FIELDS': ('auto_update_fields', (bool,)),
    'CQRS_MESSAGE_TTL': ('message_ttl', (int, type(None))),
    'correlation_function': ('correlation_function', (str, type(None))),
    'meta_function': ('meta_function', (str, type(None))),
    'outbox': ('outbox', (bool,)),
    'publish_timeout': ('publish_timeout', (int, float)),
    'outbox_relay_batch': ('outbox_relay_batch', (int,)),
    'outbox_relay_delay': ('outbox_relay_delay', (int, float)),
    'publisher': ('publisher', (str,)),
    'publish_batch_size': ('publish_batch_size', (int,)),
    'outbox_max_attempts': ('outbox_max_attempts', (int,)),
    'tombstone_retention': ('tombstone_retention', (int,)),
    'reconcile_batch_size': ('reconcile_batch_size', (int,)),
    'reconcile_pause': ('reconcile_pause', (int, float)),
    'reconcile_min_interval': ('reconcile_min_interval', (int, float)),
    'bootstrap_queue': ('bootstrap_queue', (str, type(None))),
    'reconcile_grace': ('reconcile_grace', (int, float)),
}
_REPLICA_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    'CQRS_MAX_RETRIES': ('max_retries', (int, type(None))),
    'CQRS_RETRY_DELAY': ('retry_delay', (int, float)),
    'retry_backoff': ('retry_backoff', (int, float)),
    'retry_backoff_max': ('retry_backoff_max', (int, float)),
    'retry_jitter': ('retry_jitter', (bool,)),
    'dead_letter_queue': ('dead_letter_queue', (str, type(None))),
    'dead_message_ttl': ('dead_message_ttl', (int, type(None))),
    'visibility_timeout': ('visibility_timeout', (int,)),
    'tombstone_retention': ('tombstone_retention', (int,)),
    'max_message_size': ('max_message_size', (int,)),
    'max_nesting_depth': ('max_nesting_depth', (int,)),
    'reconcile': ('reconcile', (bool,)),
    'reconcile_master_queue': ('reconcile_master_queue', (str, dict, type(None))),
    'bootstrap': ('bootstrap', (bool,)),
    'queue_type': ('queue_type', (str,)),
    'delivery_limit': ('delivery_limit', (int,)),
    'group_rows': ('group_rows', (int,)),
}
_TOP_KEYS = frozenset({'app', 'queue', 'master', 'replica'})

_BROKER_HINT = ("cqrs_celery publishes and consumes through the Celery app in CQRS['app']: its broker_url "
                'says where the broker is. Remove the key.')
#: django-cqrs keys cqrs_celery does not use: check id and hint per key (a warning; the key is ignored).
_DJANGO_CQRS_TOP_KEYS: dict[str, tuple[str, str]] = {
    'transport': ('cqrs_celery.W020', "There is no transport class: messages go through the Celery app in "
                                      "CQRS['app'] (RabbitMQ, Redis or the filesystem). Remove the key."),
    'url': ('cqrs_celery.W020', _BROKER_HINT),
    'host': ('cqrs_celery.W020', _BROKER_HINT),
    'port': ('cqrs_celery.W020', _BROKER_HINT),
    'user': ('cqrs_celery.W020', _BROKER_HINT),
    'password': ('cqrs_celery.W020', _BROKER_HINT),
    'exchange': ('cqrs_celery.W020', 'Exchanges are named per CQRS_ID (cqrs.<CQRS_ID>) and declared by the '
                                     'library. Remove the key.'),
    'consumer_prefetch_count': ('cqrs_celery.W021', 'Replica workers are Celery workers: set '
                                                    'worker_prefetch_multiplier in the Celery configuration '
                                                    'instead. Remove the key.'),
}
_DJANGO_CQRS_REPLICA_KEYS: dict[str, tuple[str, str]] = {
    'delay_queue_max_size': ('cqrs_celery.W021', 'Retries are Celery retries sent back to the replica queue '
                                                 'with a countdown; there is no in-memory delay queue to size. '
                                                 'Remove the key.'),
    'CQRS_QUERY_TIMEOUT': ('cqrs_celery.W022', "Set a statement timeout on the replica's database connection "
                                               "instead (PostgreSQL: DATABASES[...]['OPTIONS'] = "
                                               "{'options': '-c statement_timeout=5000'}). Remove the key."),
    'CQRS_LOG_TIMED_OUT_QUERIES': ('cqrs_celery.W022', 'A failed apply (a timed-out query included) is logged '
                                                       'with its error and retried. Remove the key.'),
    'CQRS_QUERY_LOGGER': ('cqrs_celery.W022', 'Logs go to the cqrs_celery.* loggers (one per module). '
                                              'Remove the key.'),
}
_CALLABLE_KEYS = frozenset({'correlation_function', 'meta_function'})

#: Every settings key, as ``section.key`` for nested ones; the docs list exactly these.
ALL_KEYS = (
    sorted(_TOP_KEYS)
    + [f'master.{k}' for k in sorted(_MASTER_KEYS)]
    + [f'replica.{k}' for k in sorted(_REPLICA_KEYS)]
)


def _resolve_app(path: str) -> Any:
    try:
        app = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(
            f"CQRS['app'] = {path!r} cannot be imported: {exc}. "
            "Point it at your Celery app, e.g. 'proj.celery.app'."
        ) from exc
    if not is_celery_app(app):
        raise ConfigurationError(f"CQRS['app'] = {path!r} is not a Celery app ({_kind(app)}).")
    return app


def is_celery_app(value: Any) -> bool:
    """True for a Celery app instance; the ``Celery`` class itself (or a subclass) is not one."""
    return isinstance(value, Celery)


def _kind(value: Any) -> str:
    return f'the class {value.__module__}.{value.__qualname__}' if isinstance(value, type) else \
        f'a {type(value).__name__}'


def _resolve_callable(section: str, key: str, value: Any) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return cast('Callable[..., Any] | None', value)
    try:
        func = import_string(value)
    except ImportError as exc:
        raise ConfigurationError(
            f"CQRS['{section}']['{key}'] = {value!r} cannot be imported: {exc}."
        ) from exc
    if not callable(func):
        raise ConfigurationError(f"CQRS['{section}']['{key}'] = {value!r} is not callable.")
    return cast('Callable[..., Any]', func)


def validate(raw: Any) -> list[Problem]:
    """Every problem with a raw ``CQRS`` setting; an empty list means it is usable."""
    if raw is None:
        return [Problem('cqrs_celery.E001', 'The CQRS setting is missing.',
                        "Add CQRS = {'app': 'proj.celery.app', ...} to your settings.")]
    if not isinstance(raw, Mapping):
        return [Problem('cqrs_celery.E001', f'The CQRS setting must be a dict, not {type(raw).__name__}.',
                        "Write CQRS = {'app': 'proj.celery.app', ...}.")]
    problems: list[Problem] = []
    for key in sorted(set(raw) - _TOP_KEYS, key=repr):
        if key in _DJANGO_CQRS_TOP_KEYS:
            check_id, hint = _DJANGO_CQRS_TOP_KEYS[key]
            problems.append(Problem(check_id, f'CQRS[{key!r}] is a django-cqrs setting cqrs_celery does not use; '
                                    'it is ignored.', hint, level='warning'))
            continue
        problems.append(Problem('cqrs_celery.E004', f'Unknown key CQRS[{key!r}].',
                                f'Known keys: {", ".join(sorted(_TOP_KEYS))}.'))
    if raw.get('app') is None:
        problems.append(Problem('cqrs_celery.E002', "CQRS['app'] is not set.",
                                "Point it at your Celery app: 'proj.celery.app' or the app object."))
    elif isinstance(raw['app'], str):
        try:
            _resolve_app(raw['app'])
        except ConfigurationError as exc:
            problems.append(Problem('cqrs_celery.E003', str(exc),
                                    'Use the dotted path of the Celery() instance in your celery.py.'))
    elif not is_celery_app(raw['app']):
        problems.append(Problem('cqrs_celery.E003', f"CQRS['app'] is {_kind(raw['app'])}, not a Celery app.",
                                'Give the Celery() instance or its dotted path (not the class).'))
    queue = raw.get('queue')
    if queue is not None and (not isinstance(queue, str) or not QUEUE_NAME_RE.fullmatch(queue)):
        problems.append(Problem('cqrs_celery.E007', f"CQRS['queue'] = {queue!r} is not a valid queue name.",
                                'Use letters, digits and . _ - : (at most 200 characters), '
                                'unique to this replica service.'))
    for section, schema in (('master', _MASTER_KEYS), ('replica', _REPLICA_KEYS)):
        problems.extend(_validate_section(section, raw.get(section), schema))
    replica = raw.get('replica')
    dead = replica.get('dead_letter_queue') if isinstance(replica, Mapping) else None
    if isinstance(queue, str) and queue and dead == queue:
        problems.append(Problem('cqrs_celery.E013',
                                f"CQRS['replica']['dead_letter_queue'] is the replica queue itself ({queue!r}): "
                                'the worker would consume its own dead letters for ever.',
                                'Leave dead_letter_queue out (dead_letter_<queue>) or give a name of its own.'))
    elif isinstance(dead, str) and dead in consumed_queues(raw):
        problems.append(Problem('cqrs_celery.E013',
                                f"CQRS['replica']['dead_letter_queue'] = {dead!r} is a queue workers consume (the "
                                'bootstrap or reconciliation queue): they would take the dead letters and drop them.',
                                'Leave dead_letter_queue out (dead_letter_<queue>) or give a name of its own.'))
    return problems


def consumed_queues(raw: Mapping[str, Any]) -> set[str]:
    """Queue names this configuration has workers consume, other than the replica queue."""
    master, replica = raw.get('master'), raw.get('replica')
    names: set[Any] = set()
    if isinstance(master, Mapping):
        names.add(master.get('bootstrap_queue'))
    reconcile = replica.get('reconcile_master_queue') if isinstance(replica, Mapping) else None
    names.update(reconcile.values() if isinstance(reconcile, Mapping) else [reconcile])
    return {name for name in names if isinstance(name, str) and name}


def _validate_section(section: str, values: Any, schema: Mapping[str, tuple[str, tuple[type, ...]]]
                      ) -> list[Problem]:
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [Problem('cqrs_celery.E005', f"CQRS['{section}'] must be a dict, not {type(values).__name__}.",
                        f"Write CQRS['{section}'] = {{...}} or leave it out for the defaults.")]
    problems = []
    for key, value in values.items():
        if section == 'replica' and key in _DJANGO_CQRS_REPLICA_KEYS:
            check_id, hint = _DJANGO_CQRS_REPLICA_KEYS[key]
            problems.append(Problem(check_id, f"CQRS['replica'][{key!r}] is a django-cqrs setting cqrs_celery "
                                    'does not use; it is ignored.', hint, level='warning'))
            continue
        if key not in schema:
            problems.append(Problem('cqrs_celery.E004', f"Unknown key CQRS['{section}'][{key!r}].",
                                    f'Known keys: {", ".join(sorted(schema))}.'))
            continue
        types = schema[key][1]
        if key in _CALLABLE_KEYS and callable(value):
            continue
        bad_bool = isinstance(value, bool) and bool not in types
        minimum, maximum = _MINIMUM.get(key, 0), _maximum(key, types)
        if not isinstance(value, types) or bad_bool or _out_of_range(value, minimum, maximum):
            names = ' or '.join('None' if t is type(None) else t.__name__ for t in types)
            bound = '' if bool in types or str in types else _range_text(minimum, maximum)
            problems.append(Problem('cqrs_celery.E005',
                                    f"CQRS['{section}'][{key!r}] = {value!r} must be {names}{bound}.",
                                    'Fix the value or remove the key to use the default.'))
        elif key == 'publisher' and value not in PUBLISHER_MODES:
            problems.append(Problem('cqrs_celery.E005',
                                    f"CQRS['master']['publisher'] = {value!r} must be one of "
                                    f"{', '.join(map(repr, PUBLISHER_MODES))}.",
                                    "Use 'thread' (the default) unless you know you need another."))
        elif key == 'queue_type' and value not in QUEUE_TYPES:
            problems.append(Problem('cqrs_celery.E005',
                                    f"CQRS['replica']['queue_type'] = {value!r} must be one of "
                                    f"{', '.join(map(repr, QUEUE_TYPES))}.",
                                    "Use 'quorum' on a RabbitMQ cluster, else leave 'classic'."))
        elif key == 'reconcile_master_queue' and _bad_queue_names(value):
            problems.append(Problem('cqrs_celery.E007',
                                    f"CQRS['replica']['reconcile_master_queue'] = {value!r} names no valid queue "
                                    f"({', '.join(map(repr, _bad_queue_names(value)))}).",
                                    "Give one queue name, or a dict {CQRS_ID: queue name} ('*' for the others); "
                                    'names use letters, digits and . _ - : (at most 200 characters).'))
        elif key in {'dead_letter_queue', 'bootstrap_queue'} and isinstance(value, str) \
                and not QUEUE_NAME_RE.fullmatch(value):
            problems.append(Problem('cqrs_celery.E007',
                                    f"CQRS['{section}'][{key!r}] = {value!r} is not a valid queue name.",
                                    'Use letters, digits and . _ - : (at most 200 characters), or leave it '
                                    'out for dead_letter_<queue>.'))
        elif key in _CALLABLE_KEYS and value is not None:
            try:
                _resolve_callable(section, key, value)
            except ConfigurationError as exc:
                problems.append(Problem('cqrs_celery.E008', str(exc),
                                        'Give a callable or the dotted path of one.'))
    return problems


#: Smallest accepted value of numeric keys whose lower bound is not 0 (a tiny positive number means
#: "above 0").
_MINIMUM: dict[str, float] = {
    'outbox_relay_batch': 1, 'publish_batch_size': 1, 'outbox_max_attempts': 1, 'retry_backoff': 1,
    'visibility_timeout': 1, 'publish_timeout': 1e-9,
    'max_nesting_depth': 8, 'max_message_size': 1024, 'reconcile_batch_size': 1, 'delivery_limit': 1,
}


#: Largest accepted value of numeric keys with an upper bound. Deeper nesting than 400 cannot be
#: handed to a worker's pool process (Python's recursion limit).
_MAXIMUM: dict[str, float] = {'max_nesting_depth': 400}

#: Keys counted in seconds: at most ten years, so that every date computed from them exists.
_SECONDS = frozenset({'CQRS_MESSAGE_TTL', 'publish_timeout', 'outbox_relay_delay', 'tombstone_retention',
                      'CQRS_RETRY_DELAY', 'retry_backoff_max', 'dead_message_ttl', 'visibility_timeout',
                      'reconcile_pause', 'reconcile_min_interval', 'reconcile_grace'})
_MAX_SECONDS = 10 * 365 * 24 * 3600


#: Largest integer of count settings without a bound of their own: what a 32-bit database column
#: or a broker argument holds (a LIMIT or x-delivery-limit beyond it fails at every use).
_MAX_INT = 2 ** 31 - 1

#: Integer settings compared in Python only, so any count works.
_UNBOUNDED = frozenset({'CQRS_MAX_RETRIES'})


def _maximum(key: str, types: tuple[type, ...]) -> float | None:
    if key in _MAXIMUM:
        return _MAXIMUM[key]
    if key in _SECONDS:
        return _MAX_SECONDS
    if int in types and float not in types and key not in _UNBOUNDED:
        return _MAX_INT
    return None


def _bad_queue_names(value: Any) -> list[Any]:
    """The entries of a ``reconcile_master_queue`` value that are not queue names."""
    if isinstance(value, str):
        return [] if QUEUE_NAME_RE.fullmatch(value) else [value]
    if isinstance(value, Mapping):
        return [key for key in value if not (isinstance(key, str) and key)] + [
            queue for queue in value.values() if not (isinstance(queue, str) and QUEUE_NAME_RE.fullmatch(queue))]
    return []


def _out_of_range(value: Any, minimum: float, maximum: float | None) -> bool:
    """True for a number that is not finite, or below ``minimum``, or above ``maximum``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if isinstance(value, float) and not math.isfinite(value):  # NaN compares False with everything
        return True
    return value < minimum or (maximum is not None and value > maximum)


def _range_text(minimum: float, maximum: float | None) -> str:
    low = 'not negative' if minimum == 0 else f'at least {minimum:g}' if minimum >= 1 else 'above 0'
    high = '' if maximum is None else f', at most {int(maximum)}' if float(maximum).is_integer() else \
        f', at most {maximum:g}'
    return f' (finite, {low}{high})'


def build(raw: Any) -> CQRSSettings:
    """Turn a raw ``CQRS`` setting into :class:`CQRSSettings`; raise on the first problem."""
    problems = [p for p in validate(raw) if p.is_error and p.id != 'cqrs_celery.E002'] if raw is not None else []
    if problems:
        first = problems[0]
        raise ConfigurationError(f'{first.msg} {first.hint} ({first.id})')
    raw = raw or {}
    master_raw = raw.get('master') or {}
    replica_raw = raw.get('replica') or {}
    master_kwargs: dict[str, Any] = {
        _MASTER_KEYS[key][0]: (_resolve_callable('master', key, value) if key in _CALLABLE_KEYS else value)
        for key, value in master_raw.items()
    }
    replica_kwargs: dict[str, Any] = {_REPLICA_KEYS[key][0]: value for key, value in replica_raw.items()
                                      if key in _REPLICA_KEYS}
    if 'CQRS_MAX_RETRIES' in replica_raw and replica_raw['CQRS_MAX_RETRIES'] is None:
        replica_kwargs['max_retries'] = math.inf  # django-cqrs' "no limit"
    return CQRSSettings(
        app=raw.get('app'),
        queue=raw.get('queue'),
        master=MasterSettings(**master_kwargs),
        replica=ReplicaSettings(**replica_kwargs),
    )


_cached: CQRSSettings | None = None


def get_settings() -> CQRSSettings:
    """The current settings; built on first use and after every change of ``settings.CQRS``."""
    global _cached
    if _cached is None:
        _cached = build(getattr(django_settings, 'CQRS', None))
    return _cached


def raw_setting() -> Any:
    """The ``CQRS`` setting as the user wrote it (for system checks)."""
    return getattr(django_settings, 'CQRS', None)


def reset_settings(*, setting: str = 'CQRS', **kwargs: Any) -> None:
    """``setting_changed`` receiver (wired in ``apps.py``): forget the cached settings."""
    global _cached
    if setting == 'CQRS':
        _cached = None
