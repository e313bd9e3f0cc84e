"""Broker names and kombu entities: the only module that formats an exchange or queue name.

* AMQP (RabbitMQ): a durable fanout exchange ``cqrs.<CQRS_ID>`` per model.
* Redis, filesystem, memory (kombu's virtual transports): the same exchange name but of type
  *direct*, routed by the binding table kombu keeps in the broker itself (Redis sets, files), so
  each bound queue's list receives its own copy and nothing is lost while a replica is offline.
  kombu's virtual fanout on Redis is PUB/SUB, which drops messages nobody is listening for.
* Every replica queue is also bound to ``cqrs.direct`` with its own name as routing key: directed
  syncs and retries travel that way, never back through the broadcast exchange.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue, binding

#: Prefix of every broadcast exchange.
EXCHANGE_PREFIX = 'cqrs.'

#: The exchange that routes to one replica queue by name.
DIRECT_EXCHANGE_NAME = 'cqrs.direct'

#: The direct exchange replicas send first-run sync requests to, routed by CQRS_ID to the queue the
#: master's worker consumes them from. Outside the ``cqrs.`` prefix on purpose: those requests are
#: ordinary Celery tasks, not envelopes for a replica queue's gate.
BOOTSTRAP_EXCHANGE_NAME = 'cqrs_bootstrap'

#: RabbitMQ queue types of replica and dead-letter queues (``CQRS['replica']['queue_type']``).
CLASSIC = 'classic'
QUORUM = 'quorum'

#: AMQP delivery mode for messages that survive a broker restart.
PERSISTENT = 2

AMQP = 'amqp'
VIRTUAL = 'virtual'


def exchange_name(cqrs_id: str) -> str:
    """Broadcast exchange for one CQRS_ID."""
    return f'{EXCHANGE_PREFIX}{cqrs_id}'


def broadcast_routing_key(cqrs_id: str) -> str:
    """Routing key of broadcast messages (ignored by AMQP fanout, matched on virtual transports)."""
    return cqrs_id


def direct_routing_key(queue: str) -> str:
    """Routing key that reaches exactly one replica queue through ``cqrs.direct``."""
    return queue


def dead_letter_queue_name(queue: str) -> str:
    """Default dead-letter queue of a replica service."""
    return f'dead_letter_{queue}'


def bootstrap_exchange() -> Exchange:
    """Where first-run sync requests go (direct, routing key: the CQRS_ID)."""
    return Exchange(BOOTSTRAP_EXCHANGE_NAME, type='direct', durable=True, delivery_mode=PERSISTENT)


def bootstrap_routing_key(cqrs_id: str) -> str:
    return cqrs_id


def queue_arguments(queue_type: str, family: str, delivery_limit: int | None = None,
                    dead_letter_queue: str | None = None) -> dict[str, Any]:
    """RabbitMQ arguments of a replica (or dead-letter) queue of ``queue_type``; empty for classic ones.

    A quorum queue counts deliveries: a message delivered more than ``delivery_limit`` times (its
    workers died on it) is dead-lettered by RabbitMQ into ``dead_letter_queue`` through
    ``cqrs.direct`` rather than dropped (the worker records it itself one delivery earlier).
    """
    if family != AMQP or queue_type != QUORUM:
        return {}
    arguments: dict[str, Any] = {'x-queue-type': QUORUM}
    if delivery_limit is not None:
        arguments['x-delivery-limit'] = delivery_limit
    if dead_letter_queue:
        arguments['x-dead-letter-exchange'] = DIRECT_EXCHANGE_NAME
        arguments['x-dead-letter-routing-key'] = direct_routing_key(dead_letter_queue)
    return arguments


def transport_family(driver_type: str) -> str:
    """``amqp`` for RabbitMQ drivers, ``virtual`` for kombu's emulated ones (redis, filesystem…)."""
    return AMQP if driver_type in {'amqp', 'pyamqp', 'librabbitmq'} else VIRTUAL


def broadcast_exchange_type(family: str) -> str:
    return 'fanout' if family == AMQP else 'direct'


def broadcast_exchange(cqrs_id: str, family: str) -> Exchange:
    """The durable exchange every replica of ``cqrs_id`` is bound to."""
    return Exchange(exchange_name(cqrs_id), type=broadcast_exchange_type(family), durable=True,
                    delivery_mode=PERSISTENT)


def direct_exchange() -> Exchange:
    return Exchange(DIRECT_EXCHANGE_NAME, type='direct', durable=True, delivery_mode=PERSISTENT)


def replica_queue(queue: str, cqrs_ids: Iterable[str], family: str, arguments: dict[str, Any] | None = None) -> Queue:
    """A replica service's durable queue, bound to ``cqrs.direct`` and to each model's exchange.

    ``arguments``: RabbitMQ queue arguments (:func:`queue_arguments`, for a quorum queue).
    """
    bindings = [binding(direct_exchange(), routing_key=direct_routing_key(queue))]
    bindings += [binding(broadcast_exchange(cqrs_id, family), routing_key=broadcast_routing_key(cqrs_id))
                 for cqrs_id in sorted(set(cqrs_ids))]
    # kombu ignores ``exchange`` when ``bindings`` are given, so every route is a binding; the
    # main exchange is set afterwards only so that Celery does not put its default one there.
    entity = Queue(queue, bindings=bindings, durable=True, queue_arguments=arguments or None)
    entity.exchange, entity.routing_key = direct_exchange(), direct_routing_key(queue)
    return entity


def binding_exchange(route: binding) -> Exchange:
    """The exchange of a binding; every binding made here names one (kombu types it Optional)."""
    exchange = route.exchange
    if exchange is None:
        raise ValueError(f'binding {route!r} has no exchange')
    return exchange


def describe(queue: Queue) -> list[dict[str, Any]]:
    """Every (exchange, type, routing key) a queue is bound to, for inspection commands."""
    rows = []
    for route in sorted(queue.bindings, key=lambda b: binding_exchange(b).name):
        exchange = binding_exchange(route)
        rows.append({'exchange': exchange.name, 'type': exchange.type, 'routing_key': route.routing_key})
    return rows
