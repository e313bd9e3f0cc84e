"""Hand envelopes to the broker through the project's Celery app (pooled producers, JSON only).

Publishing uses a kombu producer pool of its own, built from the app's broker settings with a
bounded connect timeout and, on RabbitMQ, publisher confirms: a publish returns only once the
broker has stored the message. On Redis and the filesystem broker a broadcast publish first checks
that at least one replica queue is bound (kombu would otherwise drop the message silently), so a
publish that reached no queue fails and the outbox keeps the event.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kombu import pools

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import PublishError

#: Replaced by ``cqrs_celery.testing`` to apply in-process or capture instead of using the broker.
_sender: Callable[[Envelope], None] | None = None


def set_sender(sender: Callable[[Envelope], None] | None) -> Callable[[Envelope], None] | None:
    """Install ``sender`` instead of the broker (``None`` restores it); returns the previous one."""
    global _sender
    previous, _sender = _sender, sender
    return previous


_families: dict[tuple[int, str], str] = {}


def transport_family(app: Any) -> str:
    """``amqp`` or ``virtual`` for the app's broker; cached per app and broker URL."""
    key = (id(app), str(app.conf.broker_url))
    if key not in _families:
        with app.connection_for_write() as conn:
            driver = conn.transport.driver_type
        if driver == 'filesystem':
            ensure_filesystem_folders(app)
        _families[key] = topology.transport_family(driver)
    return _families[key]


def ensure_filesystem_folders(app: Any) -> None:
    """Create the folders of kombu's filesystem transport, which fails on missing ones."""
    options = app.conf.broker_transport_options or {}
    for key, default in (('data_folder_in', 'data_in'), ('data_folder_out', 'data_out'),
                         ('control_folder', 'control'), ('processed_folder', 'processed')):
        if key != 'processed_folder' or options.get('store_processed'):
            os.makedirs(options.get(key, default), exist_ok=True)


def producer_pool(app: Any) -> Any:
    """kombu's shared producer pool for publishing envelopes (one per broker URL and options)."""
    timeout = get_settings().master.publish_timeout
    options = dict(app.conf.broker_transport_options or {})
    options.setdefault('max_retries', 1)
    if transport_family(app) == topology.AMQP:
        options['confirm_publish'] = True
    connection = app.connection_for_write(connect_timeout=timeout, transport_options=options)
    return pools.producers[connection]


def send(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """Publish one envelope: to every replica, or to one queue (a directed sync, or ``route_to``)."""
    if _sender is not None:
        _sender(envelope)
        return
    publish_to_broker(envelope, route_to=route_to, countdown=countdown)


def publish_to_broker(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """What ``send`` does when no test sender is installed: one message through the Celery app.

    Raises:
        PublishError: the broker could not be reached in time, or (Redis, filesystem) no replica
            queue is bound to the model's exchange.
    """
    app = get_settings().celery_app()
    family = transport_family(app)
    timeout = get_settings().master.publish_timeout
    target = route_to or envelope.queue
    if target:
        exchange = topology.direct_exchange()
        routing_key = topology.direct_routing_key(target)
    else:
        exchange = topology.broadcast_exchange(envelope.cqrs_id, family)
        routing_key = topology.broadcast_routing_key(envelope.cqrs_id)
    try:
        with producer_pool(app).acquire(block=True, timeout=timeout) as producer:
            if family == topology.VIRTUAL:
                _require_bound_queue(producer.channel, exchange.name, routing_key)
            app.send_task(
                TASK_NAME, args=[envelope.to_wire()], exchange=exchange.name, routing_key=routing_key,
                exchange_type=exchange.type, declare=[exchange], serializer='json', producer=producer,
                delivery_mode=topology.PERSISTENT, countdown=countdown, ignore_result=True,
                confirm_timeout=timeout, retry=True,
                retry_policy={'max_retries': 1, 'interval_start': 0, 'interval_step': timeout / 2,
                              'interval_max': timeout / 2},
            )
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(f'publishing {envelope.cqrs_id} pk={envelope.instance_pk!r} '
                           f'revision={envelope.revision} failed: {exc!r}') from exc


def _require_bound_queue(channel: Any, exchange: str, routing_key: str) -> None:
    if not any(key == routing_key for key, _, _ in channel.get_table(exchange)):
        raise PublishError(f'no replica queue is bound to {exchange} with routing key {routing_key!r}: '
                           'the message would be dropped (start a replica worker or run cqrs_topology --declare)')
