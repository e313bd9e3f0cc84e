"""The dead-letter queue of a replica service: what could not be applied, with why.

A dead letter is a JSON message ``{"envelope": …, "raw": …, "error": {…}}`` in the durable queue
``dead_letter_<queue>`` (bound to ``cqrs.direct``), which no worker consumes. ``envelope`` is the
decoded envelope when there was one; ``raw`` keeps a body that could not be decoded (as text, or
base64 for binary bodies such as pickle). The same functions serve every broker.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from kombu import Queue, binding

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope, decode, decode_message
from cqrs_celery.exceptions import ConfigurationError, EnvelopeError
from cqrs_celery.producer import publish_to_broker, transport_family

logger = logging.getLogger(__name__)

#: The reason of a letter whose message failed in a way the library did not expect (kept whole in ``raw``).
INTERNAL_ERROR = 'internal error'

_PUBLISH_RETRY = {'max_retries': 5, 'interval_start': 0, 'interval_step': 1, 'interval_max': 5}

#: Raw bodies up to this many characters are parsed to name their cqrs_id in the log.
RAW_PARSED_FOR_LOG = 64 * 1024


def dead_letter_queue(app: Any) -> Queue:
    """This service's durable dead-letter queue (RabbitMQ expires its messages after dead_message_ttl)."""
    settings = get_settings()
    name = settings.dead_letter_queue
    if not name:
        raise ConfigurationError("CQRS['queue'] is not set, so this service has no dead-letter queue.")
    ttl = settings.replica.dead_message_ttl
    family = transport_family(app)
    arguments = {'x-message-ttl': ttl * 1000} if ttl and family == topology.AMQP else {}
    arguments.update(topology.queue_arguments(settings.replica.queue_type, family))
    queue = Queue(name, bindings=[binding(topology.direct_exchange(), routing_key=topology.direct_routing_key(name))],
                  durable=True, queue_arguments=arguments or None)
    queue.exchange, queue.routing_key = topology.direct_exchange(), topology.direct_routing_key(name)
    return queue


def raw_form(body: Any, content_type: str | None = None, limit: int | None = None) -> Any:
    """A received body as something JSON can carry, never decoded by its content type.

    Text stays text; other bytes are kept in base64. A body longer than ``limit`` bytes keeps its
    first ``limit`` bytes (base64) with its full size.
    """
    if isinstance(body, str):
        body = body.encode('utf-8', 'surrogatepass')
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        if limit is not None and len(data) > limit:
            return {'content_type': content_type, 'size': len(data), 'truncated': True,
                    'base64': base64.b64encode(data[:limit]).decode('ascii')}
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
            'message': _text(error),
            'reason': reason,
            'attempts': attempts,
            'time': datetime.datetime.now(datetime.timezone.utc).isoformat(),
            'host': socket.gethostname(),
            'queue': get_settings().queue,
        },
    }


def _text(error: BaseException | str) -> str:
    """The error's message; an exception whose ``__str__`` fails is shown by its type."""
    try:
        return str(error)
    except Exception:
        return f'<{type(error).__name__} whose message cannot be shown>'


def send(letter: dict[str, Any]) -> None:
    """Publish one dead letter to this service's dead-letter queue (declared if missing)."""
    app = get_settings().celery_app()
    queue = dead_letter_queue(app)
    with app.producer_or_acquire() as producer:
        producer.publish(letter, exchange=queue.exchange, routing_key=queue.routing_key, serializer='json',
                         delivery_mode=topology.PERSISTENT, declare=[queue], retry=True,
                         retry_policy=_PUBLISH_RETRY)
    error = letter['error']
    named = named_in_letter(letter)
    data = named.get('instance_data')
    logger.error('cqrs dead letter: cqrs_id=%s pk=%s revision=%s correlation_id=%s queue=%s reason=%s '
                 'error=%s: %s attempts=%s', named.get('cqrs_id'), named.get('instance_pk'),
                 data.get('cqrs_revision') if isinstance(data, Mapping) else None, named.get('correlation_id'),
                 error['queue'], error['reason'], error['type'], error['message'], error['attempts'])


def named_in_letter(letter: Mapping[str, Any]) -> dict[str, Any]:
    """What a dead letter names (``cqrs_id``, ``instance_pk``…): its envelope, else what its raw body shows."""
    envelope = letter.get('envelope')
    if isinstance(envelope, Mapping):
        return dict(envelope)
    return dict(_named_in(letter.get('raw')) or {})


#: ``"cqrs_id": "<name>"`` in a body that cannot be parsed (cut off, nested too deep, not JSON).
_CQRS_ID_IN_TEXT = re.compile(r'"cqrs_id"\s*:\s*"([^"\\]{1,200})"')


def _named_in(raw: Any, depth: int = 0) -> Mapping[str, Any] | None:
    """The envelope-like object a raw body names (it has a ``cqrs_id``), for the log line.

    A body kept as text, as ``{'text': …}`` or in base64 is read as JSON; one that cannot be parsed
    still names its ``cqrs_id`` when the text shows it.
    """
    if isinstance(raw, Mapping) and not isinstance(raw.get('cqrs_id'), str) and depth == 0:
        raw = raw.get('text', _base64_text(raw.get('base64')) if 'base64' in raw else raw)
    if isinstance(raw, str) and depth < 3:
        try:
            if len(raw) > RAW_PARSED_FOR_LOG:
                raise ValueError('too long to parse for a log line')
            raw = json.loads(raw)
        except Exception:  # not JSON, or nested too deep to parse: look for the name in the text
            match = _CQRS_ID_IN_TEXT.search(raw[:RAW_PARSED_FOR_LOG])
            return {'cqrs_id': match.group(1)} if match else None
    if isinstance(raw, Mapping):
        return raw if isinstance(raw.get('cqrs_id'), str) else None
    if isinstance(raw, list) and depth < 3:  # a task body [args, kwargs, embed], its args, or a batch
        for item in raw[:3]:
            found = _named_in(item, depth + 1)
            if found is not None:
                return found
    return None


def _base64_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value[:RAW_PARSED_FOR_LOG // 3 * 4]).decode('utf-8', 'replace')
    except ValueError:
        return None


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


class Retried(NamedTuple):
    """What ``retry`` did (or, in a dry run, would do) with the letters it looked at."""

    sent: int
    #: letters without a decodable envelope, kept in the dead-letter queue
    without_envelope: int
    #: letters recorded by another service's queue (a shared dead-letter queue), kept
    other_service: int


def retry(app: Any, limit: int | None = None, *, expires_in: float | None = None,
          dry_run: bool = False) -> Retried:
    """Send dead envelopes back to this service's queue with attempts reset.

    Retrying is the operator's decision, so an envelope's expiry is cleared (``expires_in``: set to
    that many seconds from now instead); otherwise an expired envelope would only die again. Letters
    recorded by another service's queue stay, as do letters without an envelope. With ``dry_run``
    the letters are only counted, exactly as the real run would handle them.
    """
    queue = dead_letter_queue(app)
    own = get_settings().queue
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)
               if expires_in is not None else None)
    counts = {'sent': 0, 'without_envelope': 0, 'other_service': 0}
    with _channel(app) as channel:
        # A dry run reads every letter and puts them all back in order, like letters().
        messages = _drain(channel, queue, None if dry_run else limit)
        keep = list(messages) if dry_run else []
        for message in messages[:limit] if dry_run else messages:
            verdict, envelopes = _retryable(_decoded(message), own)
            counts[verdict] += 1
            if dry_run:
                continue
            if not envelopes:
                keep.append(message)
            for envelope in envelopes:
                publish_to_broker(envelope.replace(retries=0, expires=expires), route_to=own)
        _republish(channel, queue, keep)
        for message in messages:
            message.ack()
    return Retried(**counts)


def _retryable(letter: dict[str, Any], own: str | None) -> tuple[str, list[Envelope]]:
    """('sent', envelopes) for a letter this service can retry, else why it is kept.

    A letter has its envelope, or (reason ``internal error``) the whole message it came in as raw:
    a v1 envelope or a v2 batch, retried when every one of its rows decodes.
    """
    error = letter.get('error')
    origin = error.get('queue') if isinstance(error, Mapping) else None
    if isinstance(origin, str) and origin != own:
        return 'other_service', []
    try:
        return 'sent', [decode(letter.get('envelope'))]
    except EnvelopeError:
        pass
    if isinstance(error, Mapping) and error.get('reason') == INTERNAL_ERROR:
        try:
            rows = decode_message(letter.get('raw'))
        except EnvelopeError:
            return 'without_envelope', []
        if rows and all(isinstance(row, Envelope) for row in rows):
            return 'sent', [row for row in rows if isinstance(row, Envelope)]
    return 'without_envelope', []


def would_purge(app: Any, expired_only: bool = False) -> int:
    """How many letters ``purge`` would drop now (the queue is left as it was)."""
    found = letters(app)
    if not expired_only:
        return len(found)
    cutoff = _purge_cutoff()
    return 0 if cutoff is None else sum(_older_than(letter, cutoff) for letter in found)


def _purge_cutoff() -> datetime.datetime | None:
    ttl = get_settings().replica.dead_message_ttl
    return None if ttl is None else datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=ttl)


def purge(app: Any, expired_only: bool = False) -> int:
    """Drop dead letters (only those older than ``dead_message_ttl`` with ``expired_only``)."""
    queue = dead_letter_queue(app)
    with _channel(app) as channel:
        if not expired_only:
            return int(channel.queue_purge(queue.name) or 0)
        cutoff = _purge_cutoff()
        messages = _drain(channel, queue, None)
        keep = messages if cutoff is None else [m for m in messages if not _older_than(_decoded(m), cutoff)]
        _republish(channel, queue, keep)
        for message in messages:
            message.ack()
        return len(messages) - len(keep)


def _older_than(letter: dict[str, Any], cutoff: datetime.datetime) -> bool:
    try:
        died = datetime.datetime.fromisoformat(letter['error']['time'])
        return died < cutoff
    except (KeyError, TypeError, ValueError):
        return False


def as_json_line(letter: Any) -> str:
    """One letter as strict JSON on one line, whatever it holds.

    Numbers that are not finite become strings, text that cannot be encoded (a lone surrogate) is
    written with ``\\u`` escapes, values JSON has no type for become their text; a letter that still
    cannot be written is shown as an error line of its own, so one letter never stops a dump.
    """
    try:
        safe = _json_safe(letter)
        text = json.dumps(safe, ensure_ascii=False, allow_nan=False, sort_keys=True)
        try:
            text.encode('utf-8')
        except UnicodeEncodeError:
            text = json.dumps(safe, ensure_ascii=True, allow_nan=False, sort_keys=True)
        return text
    except (RecursionError, ValueError, TypeError) as exc:
        return json.dumps({'envelope': None, 'raw': None, 'error': {
            'type': type(exc).__name__, 'message': f'this dead letter cannot be shown as JSON: {exc}',
            'reason': 'unprintable dead letter'}}, sort_keys=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes | bytearray):
        return {'base64': base64.b64encode(bytes(value)).decode('ascii')}
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)
