"""Decommission a replica queue: unbind it from every exchange and delete it with its messages.

A replica service that is gone for good leaves its durable queue bound to the models' exchanges,
so every change keeps being copied into it. RabbitMQ removes a queue's bindings with the queue.
kombu's virtual transports keep bindings in tables of their own (a Redis set per exchange, a file
per exchange for the filesystem broker, process memory for ``memory://``) that a plain delete from
another process does not touch: every table that names the queue is edited here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cqrs_celery import topology


@dataclasses.dataclass(frozen=True)
class QueueState:
    """A queue as the broker holds it."""

    name: str
    exists: bool
    messages: int
    #: ``(exchange, routing_key)`` of each binding; ``None`` on RabbitMQ, which cannot list them
    #: without its management API (they go with the queue).
    bindings: list[tuple[str, str]] | None
    #: Consumers attached now (RabbitMQ; ``None`` where the broker cannot tell).
    consumers: int | None = None


@contextmanager
def _channel(app: Any) -> Iterator[tuple[Any, str]]:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        channel = conn.channel()
        try:
            yield channel, str(conn.transport.driver_type)
        finally:
            channel.close()


def inspect(app: Any, name: str) -> QueueState:
    """What ``delete`` would remove: the queue's messages, bindings and consumers (nothing changes)."""
    with _channel(app) as (channel, driver):
        if topology.transport_family(driver) == topology.AMQP:
            return _amqp_state(app, name)
        return _virtual_state(channel, driver, name)


def delete(app: Any, name: str) -> QueueState:
    """Unbind and delete ``name`` with its messages; returns what it held."""
    with _channel(app) as (channel, driver):
        if topology.transport_family(driver) == topology.AMQP:
            state = _amqp_state(app, name)
            if state.exists:
                channel.queue_delete(name)
            return state
        state = _virtual_state(channel, driver, name)
        if state.messages:
            channel._purge(name)
        for exchange, routing_key, pattern in _virtual_bindings(channel, driver, name):
            channel.queue_unbind(name, exchange, routing_key)  # memory://: its tables live in this process
            channel._delete(name, exchange, routing_key, pattern)  # redis, filesystem: their stored tables
        if driver == 'redis':
            with channel.conn_or_acquire() as client:
                client.delete(*[channel._q_for_pri(name, priority) for priority in channel.priority_steps])
        elif driver == 'memory':
            channel._delete(name)
        return state


def _amqp_state(app: Any, name: str) -> QueueState:
    """A passive declare tells whether the queue exists (on a channel of its own: a miss closes it)."""
    from amqp.exceptions import NotFound

    with _channel(app) as (channel, _):
        try:
            _, messages, consumers = channel.queue_declare(name, passive=True)
        except NotFound:
            return QueueState(name, exists=False, messages=0, bindings=None, consumers=0)
    return QueueState(name, exists=True, messages=int(messages), bindings=None, consumers=int(consumers))


def _virtual_state(channel: Any, driver: str, name: str) -> QueueState:
    bindings = [(exchange, routing_key) for exchange, routing_key, _ in _virtual_bindings(channel, driver, name)]
    present = _has_queue(channel, driver, name)
    messages = int(channel._size(name) or 0) if present else 0
    return QueueState(name, exists=bool(bindings) or messages > 0 or (present and driver != 'filesystem'),
                      messages=messages, bindings=bindings)


def _has_queue(channel: Any, driver: str, name: str) -> bool:
    if driver in ('memory', 'redis'):
        return bool(channel._has_queue(name))
    return True  # filesystem: a queue is its message files; _size counts them


def _virtual_bindings(channel: Any, driver: str, name: str) -> list[tuple[str, str, str]]:
    """``(exchange, routing_key, pattern)`` of every stored binding of queue ``name``."""
    found: list[tuple[str, str, str]] = []
    for exchange in _exchanges(channel, driver):
        try:
            table = channel.get_table(exchange)
        except KeyError:
            continue
        found.extend((exchange, routing_key or '', pattern or '') for routing_key, pattern, queue in table
                     if queue == name)
    return found


def _exchanges(channel: Any, driver: str) -> list[str]:
    """Every exchange the broker keeps a binding table for."""
    if driver == 'redis':
        prefix = channel.keyprefix_queue % ''
        with channel.conn_or_acquire() as client:
            keys = [k.decode() if isinstance(k, bytes) else str(k)
                    for k in client.scan_iter(match=channel.keyprefix_queue % '*')]
        return sorted(key[len(prefix):] for key in keys if key.startswith(prefix))
    if driver == 'filesystem':
        return sorted(path.name[:-len('.exchange')] for path in Path(channel.control_folder).glob('*.exchange'))
    return sorted(getattr(channel.state, 'exchanges', {}) or {})
