"""Hand envelopes to the broker through the project's Celery app (pooled producers, JSON only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope

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
            _families[key] = topology.transport_family(conn.transport.driver_type)
    return _families[key]


def send(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """Publish one envelope: to every replica, or to one queue (a directed sync, or ``route_to``).

    Uses Celery's pooled producers; messages are persistent.
    """
    if _sender is not None:
        _sender(envelope)
        return
    publish_to_broker(envelope, route_to=route_to, countdown=countdown)


def publish_to_broker(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """What ``send`` does when no test sender is installed: one message through the Celery app."""
    app = get_settings().celery_app()
    target = route_to or envelope.queue
    if target:
        exchange = topology.direct_exchange()
        routing_key = topology.direct_routing_key(target)
    else:
        exchange = topology.broadcast_exchange(envelope.cqrs_id, transport_family(app))
        routing_key = topology.broadcast_routing_key(envelope.cqrs_id)
    app.send_task(
        TASK_NAME, args=[envelope.to_wire()], exchange=exchange.name, routing_key=routing_key,
        exchange_type=exchange.type, declare=[exchange], serializer='json',
        delivery_mode=topology.PERSISTENT, countdown=countdown, ignore_result=True,
        retry=True, retry_policy={'max_retries': 3, 'interval_start': 0, 'interval_step': 0.5,
                                  'interval_max': 2},
    )
