"""A worker consumer step: no message on a replica queue can stop the worker or be lost unread.

Every message routed through a cqrs exchange or to this service's replica queue passes the gate
(:mod:`cqrs_celery.replica.guard`) before Celery decodes it or builds a request from it; a refused
message goes to the dead-letter queue with the reason, then is acknowledged. Messages Celery itself
rejects (broken JSON, an unknown task name, anything it cannot build a request from) are
dead-lettered the same way instead of being dropped, or stopping the worker. When a dead letter
cannot be published, the message goes back to its queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.replica import guard

logger = logging.getLogger(__name__)

#: Raw bodies longer than this are kept truncated in a dead letter (its size is recorded).
RAW_KEPT = 64 * 1024


def is_cqrs_message(message: Any) -> bool:
    """True for messages routed through a cqrs exchange or to this service's replica queue."""
    info = message.delivery_info or {}
    exchange = str(info.get('exchange') or '')
    queue = get_settings().queue
    return exchange.startswith(topology.EXCHANGE_PREFIX) or (queue is not None and info.get('routing_key') == queue)


def over_delivery_limit(message: Any) -> int | None:
    """Previous deliveries of a quorum queue message that reached ``delivery_limit``, else None.

    RabbitMQ counts them in ``x-delivery-count`` (quorum queues); a message on which workers keep
    dying is dead-lettered here, with its body, one delivery before RabbitMQ would drop it.
    """
    count = (getattr(message, 'headers', None) or {}).get('x-delivery-count')
    if isinstance(count, int) and not isinstance(count, bool) and count >= get_settings().replica.delivery_limit:
        return count
    return None


def dead_letter(message: Any, error: BaseException | str, reason: str) -> None:
    """Dead-letter ``message`` with its raw body, then ack it; on failure put it back in its queue."""
    from cqrs_celery.replica import dead_letters

    try:
        dead_letters.send(dead_letters.record(
            error=error, reason=reason, attempts=0,
            raw=dead_letters.raw_form(message.body, message.content_type, limit=RAW_KEPT)))
        message.ack()
    except Exception:
        logger.exception('cqrs could not dead-letter a refused message (%s); it goes back to its queue', reason)
        try:
            message.reject(requeue=True)
        except Exception:
            logger.exception('cqrs could not requeue a refused message (%s)', reason)


def refused(message: Any) -> bool:
    """Dead-letter ``message`` when its workers died on it too often or the gate refuses it; True if so."""
    return admitted(message) is None


def admitted(message: Any) -> Any:
    """The body of ``message`` as the gate parsed it; None when ``message`` was dead-lettered.

    A message is dead-lettered when its workers died on it too often or the gate refuses it.
    """
    delivered = over_delivery_limit(message)
    if delivered is not None:
        dead_letter(message, f'delivered {delivered + 1} times without being acknowledged (its workers died on '
                    f'it); delivery_limit is {get_settings().replica.delivery_limit}', 'delivery limit')
        return None
    refusal, body = guard.inspect(message)
    if refusal is not None:
        dead_letter(message, refusal.message, refusal.reason)
        return None
    if getattr(message, '_decoded_cache', True) is None:
        # kombu's json would decode the body to the same value (the gate admits no kombu type
        # marker): Celery, which decodes it again only to tell the task protocol, reads this one.
        message._decoded_cache = body
    return body


def guard_task_handler(create_task_handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the consumer's ``create_task_handler`` so every cqrs message passes the gate first."""

    def create(*args: Any, **kwargs: Any) -> Any:
        on_task_received = create_task_handler(*args, **kwargs)

        def on_message(message: Any) -> Any:
            if not is_cqrs_message(message):
                return on_task_received(message)
            if refused(message):
                return None
            try:
                return on_task_received(message)
            except Exception as exc:  # Celery would stop the worker, and the message would kill the next one
                logger.exception('cqrs: Celery could not take a message from a replica queue')
                dead_letter(message, exc, 'invalid message')
                return None

        return on_message

    return create


class DeadLetterInvalidMessages(bootsteps.Step):
    """Puts the gate in front of the task handler and wraps the handlers of refused messages."""

    name = 'cqrs_celery dead-letter invalid messages'

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        c.create_task_handler = guard_task_handler(c.create_task_handler)
        on_invalid_task, on_unknown_task = c.on_invalid_task, c.on_unknown_task
        on_unknown_message, on_decode_error = c.on_unknown_message, c.on_decode_error

        def invalid_task(body: Any, message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message):
                dead_letter(message, exc, 'invalid message')
                return None
            return on_invalid_task(body, message, exc)

        def unknown_task(body: Any, message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message):
                dead_letter(message, exc, 'unknown task')
                return None
            return on_unknown_task(body, message, exc)

        def unknown_message(body: Any, message: Any) -> Any:
            if is_cqrs_message(message):
                dead_letter(message, 'not a Celery task message', 'unknown message')
                return None
            return on_unknown_message(body, message)

        def decode_error(message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message):
                dead_letter(message, exc, 'undecodable')
                return None
            return on_decode_error(message, exc)

        c.on_invalid_task, c.on_unknown_task = invalid_task, unknown_task
        c.on_unknown_message, c.on_decode_error = unknown_message, decode_error
