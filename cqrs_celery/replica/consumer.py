"""A worker consumer step: messages Celery cannot even decode go to the dead-letter queue.

Celery rejects a message it cannot turn into a task (a pickle body when only JSON is accepted,
broken JSON, an unknown task name); on Redis a rejected message is simply gone. For messages that
came through a cqrs exchange, this step dead-letters them with the reason instead, then acks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from cqrs_celery import topology
from cqrs_celery.conf import get_settings

logger = logging.getLogger(__name__)


def is_cqrs_message(message: Any) -> bool:
    """True for messages routed through a cqrs exchange or to this service's replica queue."""
    info = message.delivery_info or {}
    exchange = str(info.get('exchange') or '')
    queue = get_settings().queue
    return exchange.startswith(topology.EXCHANGE_PREFIX) or (queue is not None and info.get('routing_key') == queue)


def _dead_letter(message: Any, error: BaseException | str, reason: str) -> bool:
    from cqrs_celery.replica import dead_letters

    try:
        dead_letters.send(dead_letters.record(error=error, reason=reason, attempts=0,
                                              raw=dead_letters.raw_form(message.body, message.content_type)))
        message.ack()
    except Exception:
        logger.exception('cqrs could not dead-letter an invalid message (%s); Celery rejects it', reason)
        return False
    return True


class DeadLetterInvalidMessages(bootsteps.Step):
    """Wraps the consumer's handlers for invalid, undecodable and unknown messages."""

    name = 'cqrs_celery dead-letter invalid messages'

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        on_invalid_task, on_unknown_task = c.on_invalid_task, c.on_unknown_task
        on_unknown_message, on_decode_error = c.on_unknown_message, c.on_decode_error

        def invalid_task(body: Any, message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message) and _dead_letter(message, exc, 'invalid message'):
                return None
            return on_invalid_task(body, message, exc)

        def unknown_task(body: Any, message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message) and _dead_letter(message, exc, 'unknown task'):
                return None
            return on_unknown_task(body, message, exc)

        def unknown_message(body: Any, message: Any) -> Any:
            if is_cqrs_message(message) and _dead_letter(message, 'not a Celery task message', 'unknown message'):
                return None
            return on_unknown_message(body, message)

        def decode_error(message: Any, exc: BaseException) -> Any:
            if is_cqrs_message(message) and _dead_letter(message, exc, 'undecodable'):
                return None
            return on_decode_error(message, exc)

        c.on_invalid_task, c.on_unknown_task = invalid_task, unknown_task
        c.on_unknown_message, c.on_decode_error = unknown_message, decode_error
