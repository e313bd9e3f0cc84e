"""The dead-letter queue of a replica service: what could not be applied, with why.

A dead letter is a JSON message ``{"envelope": …, "raw": …, "error": {…}}`` in the durable queue
``dead_letter_<queue>`` (bound to ``cqrs.direct``), which no worker consumes. ``envelope`` is the
decoded envelope when there was one; ``raw`` keeps a body that could not be decoded (as text, or
base64 for binary bodies such as pickle). The same functions serve every broker.
"""

from __future__ import annotations

import base64
import datetime
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Queue, binding

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.exceptions import ConfigurationError, EnvelopeError
from cqrs_celery.producer import publish_to_broker, transport_family

logger = logging.getLogger(__name__)

_PUBLISH_RETRY = {'max_retries': 5, 'interval_start': 0, 'interval_step': 1, 'interval_max': 5}


def dead_letter_queue(app: Any) -> Queue:
    """This service's durable dead-letter queue (RabbitMQ expires its messages after dead_message_ttl)."""
    settings = get_settings()
    name = settings.dead_letter_queue
    if not name:
        raise ConfigurationError("CQRS['queue'] is not set, so this service has no dead-letter queue.")
    ttl = settings.replica.dead_message_ttl
    arguments = {'x-message-ttl': ttl * 1000} if ttl and transport_family(app) == topology.AMQP else None
    queue = Queue(name, bindings=[binding(topology.direct_exchange(), routing_key=topology.direct_routing_key(name))],
                  durable=True, queue_arguments=arguments)
    queue.exchange, queue.routing_key = topology.direct_exchange(), topology.direct_routing_key(name)
    return queue


def raw_form(body: Any, content_type: str | None = None) -> Any:
    """A received body as something JSON can carry."""
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError:
            return {'content_type': content_type, 'base64': base64.b64encode(data).decode('ascii')}
        return text if content_type in (None, 'application/json') else {'content_type': content_type, 'text': text}
    return body


def record(*, error: BaseException | str, reason: str, attempts: int, envelope: Envelope | None = None,
           raw: Any = None) -> dict[str, Any]:
    """The dead letter for an envelope (or raw body) that failed with ``error``."""
    return {
        'envelope': envelope.to_wire() if envelope is not None else None,
        'raw': None if envelope is not None else raw,
        'error': {
            'type': type(error).__name__ if isinstance(error, BaseException) else 'Rejected',
            'message': str(error),
            'reason': reason,
            'attempts': attempts,
            'time': datetime.datetime.now(datetime.timezone.utc).isoformat(),
            'host': socket.gethostname(),
            'queue': get_settings().queue,
        },
    }


def send(letter: dict[str, Any]) -> None:
    """Publish one dead letter to this service's dead-letter queue (declared if missing)."""
    app = get_settings().celery_app()
    queue = dead_letter_queue(app)
    with app.producer_or_acquire() as producer:
        producer.publish(letter, exchange=queue.exchange, routing_key=queue.routing_key, serializer='json',
                         delivery_mode=topology.PERSISTENT, declare=[queue], retry=True,
                         retry_policy=_PUBLISH_RETRY)
    error = letter['error']
    envelope = letter.get('envelope') or {}
    logger.error('cqrs dead letter: cqrs_id=%s pk=%s revision=%s correlation_id=%s queue=%s reason=%s '
                 'error=%s: %s attempts=%s', envelope.get('cqrs_id'), envelope.get('instance_pk'),
                 (envelope.get('instance_data') or {}).get('cqrs_revision'), envelope.get('correlation_id'),
                 error['queue'], error['reason'], error['type'], error['message'], error['attempts'])


@contextmanager
def _channel(app: Any) -> Iterator[Any]:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        channel = conn.channel()
        try:
            dead_letter_queue(app)(channel).declare()
            yield channel
        finally:
            channel.close()


def _drain(channel: Any, queue: Queue, limit: int | None) -> list[Any]:
    """Take messages (unacknowledged) until the queue is empty or ``limit`` is reached."""
    bound = queue(channel)
    messages: list[Any] = []
    while limit is None or len(messages) < limit:
        message = bound.get(no_ack=False, accept=['json'])
        if message is None:
            break
        messages.append(message)
    return messages


def letters(app: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """Every dead letter, oldest first, leaving the queue as it was (read, re-queued in order, acked)."""
    queue = dead_letter_queue(app)
    with _channel(app) as channel:
        # Every letter is taken and re-queued, even with a limit: re-queueing only the first ones
        # would move them behind the rest.
        messages = _drain(channel, queue, None)
        bodies = [_decoded(m) for m in messages[:limit]]
        _republish(channel, queue, messages)
        for message in messages:
            message.ack()
    return bodies


def _decoded(message: Any) -> dict[str, Any]:
    try:
        body = message.decode()
    except Exception as exc:  # a foreign message in our queue: keep it, show it raw
        return {'envelope': None, 'raw': raw_form(message.body, message.content_type),
                'error': {'type': type(exc).__name__, 'message': str(exc), 'reason': 'undecodable dead letter'}}
    return body if isinstance(body, dict) else {'envelope': None, 'raw': body, 'error': {}}


def _republish(channel: Any, queue: Queue, messages: list[Any]) -> None:
    from kombu import Producer

    producer = Producer(channel)
    for message in messages:
        producer.publish(message.body, exchange=queue.exchange, routing_key=queue.routing_key,
                         content_type=message.content_type, content_encoding=message.content_encoding,
                         headers=message.headers, delivery_mode=topology.PERSISTENT, retry=True,
                         retry_policy=_PUBLISH_RETRY)


def retry(app: Any, limit: int | None = None) -> tuple[int, int]:
    """Send dead envelopes back to this service's queue with attempts reset.

    Returns:
        (re-sent, kept): letters without a decodable envelope stay in the dead-letter queue.
    """
    queue = dead_letter_queue(app)
    own = get_settings().queue
    assert own is not None  # dead_letter_queue() raised otherwise
    sent = kept = 0
    with _channel(app) as channel:
        messages = _drain(channel, queue, limit)
        keep = []
        for message in messages:
            try:
                envelope = decode(_decoded(message).get('envelope'))
            except EnvelopeError:
                keep.append(message)
                continue
            publish_to_broker(envelope.replace(retries=0), route_to=own)
            sent += 1
        _republish(channel, queue, keep)
        kept = len(keep)
        for message in messages:
            message.ack()
    return sent, kept


def purge(app: Any, expired_only: bool = False) -> int:
    """Drop dead letters (only those older than ``dead_message_ttl`` with ``expired_only``)."""
    queue = dead_letter_queue(app)
    with _channel(app) as channel:
        if not expired_only:
            return int(channel.queue_purge(queue.name) or 0)
        ttl = get_settings().replica.dead_message_ttl
        messages = _drain(channel, queue, None)
        if ttl is None:
            keep = messages
        else:
            cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=ttl)
            keep = [m for m in messages if not _older_than(_decoded(m), cutoff)]
        _republish(channel, queue, keep)
        for message in messages:
            message.ack()
        return len(messages) - len(keep)


def _older_than(letter: dict[str, Any], cutoff: datetime.datetime) -> bool:
    try:
        died = datetime.datetime.fromisoformat(letter['error']['time'])
    except (KeyError, TypeError, ValueError):
        return False
    return died < cutoff
