"""Worker set-up: the replica queue and its bindings, declared when ``celery worker`` starts.

``celery -A proj worker -Q my_replica -c 2`` needs nothing else: when the worker initialises, the
queue named by ``CQRS['queue']`` is added to the app's queues with a binding to each replicated
model's exchange, and Celery declares it (again after every reconnection).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from kombu import Exchange, Queue

from cqrs_celery import filesystem, topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import MAX_HOP
from cqrs_celery.exceptions import ConfigurationError
from cqrs_celery.producer import transport_family
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

logger = logging.getLogger(__name__)


def replica_queue(app: Any) -> Queue | None:
    """This service's replica queue with its bindings, or None if it replicates nothing."""
    settings = get_settings()
    queue = settings.queue
    if not queue or not ReplicaRegistry.ids():
        return None
    family = transport_family(app)
    arguments = topology.queue_arguments(settings.replica.queue_type, family, settings.replica.delivery_limit,
                                         settings.dead_letter_queue)
    return topology.replica_queue(queue, ReplicaRegistry.ids(), family, arguments)


def master_exchanges(app: Any) -> list[Exchange]:
    family = transport_family(app)
    return [topology.broadcast_exchange(cqrs_id, family) for cqrs_id in MasterRegistry.ids()]


def install(app: Any) -> Queue | None:
    """Put the replica queue in ``app.amqp.queues``, replacing a same-named plain queue."""
    queue = replica_queue(app)
    if queue is None:
        return None
    queues = app.amqp.queues
    queues[queue.name] = queue
    if queue.name in queues.consume_from:
        queues.consume_from[queue.name] = queue
    logger.info('cqrs replica queue %s bound to %s', queue.name,
                ', '.join(topology.binding_exchange(b).name for b in queue.bindings))
    return queue


def max_retry_delay(app: Any | None = None) -> float:
    """Longest countdown one retry message may carry on this broker.

    A delayed retry is held unacknowledged by the worker until it is due. On Redis, if that took
    longer than the visibility timeout, Redis would hand the message out again and the retry would
    loop; on RabbitMQ, longer than ``consumer_timeout`` closes the channel. A hop is therefore at
    most half the visibility timeout on Redis and ``MAX_HOP`` everywhere; longer back-offs take
    several hops (the envelope's ``not_before``), so they are not capped.
    """
    app = app or get_settings().celery_app()
    if _driver(app) != 'redis':
        return MAX_HOP
    options = app.conf.broker_transport_options
    timeout = options.get('visibility_timeout') if isinstance(options, Mapping) else None
    if timeout is None:
        timeout = get_settings().replica.visibility_timeout
    try:
        half = float(timeout) / 2
    except (TypeError, ValueError):
        half = get_settings().replica.visibility_timeout / 2
    return min(half, MAX_HOP) if math.isfinite(half) and half > 0 else MAX_HOP


_drivers: dict[tuple[int, str], str] = {}


def _driver(app: Any) -> str:
    key = (id(app), str(app.conf.broker_url))
    if key not in _drivers:
        with app.connection_for_write() as conn:
            _drivers[key] = str(conn.transport.driver_type)
    return _drivers[key]


#: Seconds between kombu's sweeps for a dead worker's messages on Redis (unless the app sets one).
RESTORE_INTERVAL = 5


def configure_worker(app: Any) -> None:
    """Worker settings the replica needs: Redis visibility timeout and the dead-letter consumer step."""
    from cqrs_celery.replica.consumer import DeadLetterInvalidMessages

    if replica_queue(app) is None:  # also creates the filesystem broker's folders
        return
    if _driver(app) == 'redis':
        options = dict(app.conf.broker_transport_options or {})
        if 'visibility_timeout' not in options:
            # kombu's default (1 hour) would keep a killed worker's messages away for that long.
            options['visibility_timeout'] = get_settings().replica.visibility_timeout
            logger.info('cqrs set the Redis visibility_timeout to %ss', options['visibility_timeout'])
        # kombu looks for timed-out messages every interval × throttle seconds (10 × 10 by default):
        # look every few seconds, so they come back soon after the visibility timeout.
        options.setdefault('unacked_restore_interval', RESTORE_INTERVAL)
        options.setdefault('unacked_restore_throttle', 1)
        app.conf.broker_transport_options = options
    app.steps['consumer'].add(DeadLetterInvalidMessages)


def on_celeryd_init(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """``celeryd_init`` receiver: runs before ``-Q`` is applied and before any connection."""
    filesystem.configure(instance.app)
    configure_worker(instance.app)
    install(instance.app)


def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    """``worker_init`` receiver: after ``-Q``; makes sure the selected queue has its bindings.

    A replica queue that exists on RabbitMQ with other arguments than configured (a classic queue
    while ``queue_type`` is ``'quorum'``) would make every declaration fail: the worker stops at
    once with the fix instead.
    """
    from cqrs_celery import bootstrap

    if install(sender.app) is not None:
        problems = queue_problems(sender.app)
        if problems:
            for problem in problems:
                logger.critical('cqrs %s', problem)
            raise SystemExit(f'cqrs_celery: {problems[0]}')
        keep_database_connections(sender.app)
        prefetch_one(sender)
    bootstrap.install_request_queue(sender.app)


def prefetch_one(worker: Any) -> bool:
    """A worker that consumes only the replica queue holds one message per process; returns True if set.

    Messages a worker prefetches wait in its main process until a pool process is free, and the
    apply task cannot take them into its group (``gather.py`` takes what is still in the queue):
    under a steady flow each waits behind the one being applied. With one message per process the
    others stay in the queue, and the next task takes them all along. A worker that also consumes
    other queues, or whose multiplier was set in the Celery configuration
    (``worker_prefetch_multiplier``) or on its command line to another value than Celery's default,
    is left as it is. (Celery's command line fills ``--prefetch-multiplier`` in with the default, so
    ``--prefetch-multiplier 4`` cannot be told from no option: set 4 in the configuration instead.)
    """
    from celery.app.defaults import DEFAULTS

    app = worker.app
    if (app.conf.value_set_for('worker_prefetch_multiplier')
            or worker.prefetch_multiplier != DEFAULTS['worker_prefetch_multiplier']
            or set(app.amqp.queues.consume_from) != {get_settings().queue}):
        return False
    worker.prefetch_multiplier = 1
    logger.info('cqrs: this worker prefetches one message per pool process from queue %s (the apply task takes '
                'the waiting ones along); set worker_prefetch_multiplier in the Celery configuration to choose '
                'another value', get_settings().queue)
    return True


def queue_problems(app: Any) -> list[str]:
    """RabbitMQ only: this service's replica / dead-letter queues that exist with other arguments.

    Each queue that exists is declared again with the configured arguments (a no-op when they are
    equal); RabbitMQ refuses that with PRECONDITION_FAILED when the queue was created otherwise —
    typically a classic queue while ``CQRS['replica']['queue_type']`` is now ``'quorum'``. Nothing
    is created. Returns one sentence per queue, with the fix; an unreachable broker gives none.
    """
    queue = replica_queue(app)
    if queue is None or transport_family(app) != topology.AMQP:
        return []
    from amqp.exceptions import NotFound, PreconditionFailed

    problems = []
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            for entity in (queue, dead_letter_queue(app)):
                channel = conn.channel()
                try:
                    channel.queue_declare(entity.name, passive=True)
                    channel.queue_declare(entity.name, durable=True, auto_delete=False,
                                          arguments=entity.queue_arguments or {})
                except NotFound:
                    continue  # not created yet: declared with the right arguments when the worker starts
                except PreconditionFailed as exc:
                    problems.append(_mismatch(entity, exc))
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
    except Exception as exc:  # the broker cannot be reached: the worker reports that itself
        logger.debug('cqrs could not check the queues on the broker: %r', exc)
    return problems


def _mismatch(entity: Queue, exc: BaseException) -> str:
    wanted = get_settings().replica.queue_type
    return (f'queue {entity.name} exists on RabbitMQ with other arguments than configured '
            f"(CQRS['replica']['queue_type'] = {wanted!r}): {exc}. RabbitMQ cannot change a queue's type or "
            f'arguments: stop its workers, let them drain it (or move its messages), delete it '
            f'(rabbitmqctl delete_queue {entity.name}), then run manage.py cqrs_topology --declare '
            f'(or start a worker) to create it as configured; or set queue_type back.')


def keep_database_connections(app: Any) -> None:
    """One database connection per worker process, kept across tasks, with Django's health checks.

    Celery's Django fix-up closes every connection before and after each task unless
    ``CELERY_DB_REUSE_MAX`` is set, whatever ``CONN_MAX_AGE`` says: a new connection per message.
    Replica workers instead keep theirs and, around each task, drop only a connection that is
    broken, left in a transaction, or older than a ``CONN_MAX_AGE`` above 0 (``CONN_HEALTH_CHECKS``
    then checks it before its next use, as in a Django request).
    """
    from celery.signals import task_postrun, task_prerun

    for fixup in getattr(app, '_fixups', ()):
        worker_fixup = getattr(fixup, '_worker_fixup', None)
        if worker_fixup is not None and not worker_fixup.db_reuse_max:
            worker_fixup.db_reuse_max = _NEVER  # the fix-up now closes after 2 × this many tasks
    task_prerun.connect(_check_connections, weak=False, dispatch_uid='cqrs_celery.check_connections.pre')
    task_postrun.connect(_check_connections, weak=False, dispatch_uid='cqrs_celery.check_connections.post')


_NEVER = 2 ** 62


def _check_connections(**kwargs: Any) -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.settings_dict.get('CONN_MAX_AGE'):
            connection.close_at = None  # 0 means "per request" in Django; a worker process is long-lived
        connection.close_if_unusable_or_obsolete()


def dead_letter_queue(app: Any) -> Queue:
    from cqrs_celery.replica.dead_letters import dead_letter_queue as build

    return build(app)


def declare(app: Any) -> list[str]:
    """Declare this service's exchanges and replica queue on the broker; returns what was declared.

    Raises:
        ConfigurationError: a queue exists with other arguments (see :func:`queue_problems`).
    """
    problems = queue_problems(app)
    if problems:
        raise ConfigurationError(' '.join(problems))
    done = []
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for exchange in master_exchanges(app):
            exchange(channel).declare()
            done.append(f'exchange {exchange.name} ({exchange.type})')
        queue = replica_queue(app)
        if queue is not None:
            queue(channel).declare()
            kind = (queue.queue_arguments or {}).get('x-queue-type', 'classic')
            done.append(f'queue {queue.name}' + (f' ({kind})' if kind != 'classic' else ''))
            dead = dead_letter_queue(app)
            dead(channel).declare()
            done.append(f'queue {dead.name} (dead letters)')
    return done


def on_beat_init(sender: Any = None, **kwargs: Any) -> None:
    """``beat_init`` receiver: a ``filesystem://`` beat sends to the same shared folders as the workers."""
    app = getattr(sender, 'app', None)
    if app is not None:
        filesystem.configure(app)


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: say so when this worker will never apply a change of this service.

    A replica worker started without ``-Q <queue>`` consumes only the app's default queues, so its
    replica queue fills up unread; a SQLite replica database without IMMEDIATE transactions makes
    two worker processes fail each other with ``database is locked``.
    """
    from cqrs_celery.checks import check_sqlite_replica

    queue = get_settings().queue
    if not queue or not ReplicaRegistry.ids():
        return
    consumed = consumed_queues(sender)
    if consumed is not None and queue not in consumed:
        logger.warning('cqrs this worker does not consume the replica queue %s (it consumes: %s): the changes of %s '
                       'wait there unapplied. Start it with -Q %s (more queues after a comma: -Q %s,%s).',
                       queue, ', '.join(sorted(consumed)) or 'nothing', ', '.join(ReplicaRegistry.ids()), queue, queue,
                       ','.join(sorted(consumed)) or 'celery')
    for message in check_sqlite_replica():
        logger.warning('cqrs %s %s (%s)', message.msg, message.hint, message.id)


def consumed_queues(consumer: Any) -> set[str] | None:
    """Names of the queues a worker's consumer reads (None when it cannot be told)."""
    task_consumer = getattr(consumer, 'task_consumer', None)
    if task_consumer is not None:
        return {queue.name for queue in task_consumer.queues}
    app = getattr(consumer, 'app', None)
    if app is None:
        return None
    return set(app.amqp.queues.consume_from)
