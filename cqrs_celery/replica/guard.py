"""The replica queue's gate: a task message is checked on its raw bytes before Celery touches it.

Celery decodes a body with any serializer the project's app accepts (pickle runs code while it
decodes), builds its request from headers it trusts, and stops the worker on errors it does not
expect. So a message that comes to a replica queue is checked first: JSON content, size, nesting
depth, strict JSON, the cqrs task's call shape (one positional envelope, nothing embedded) and the
Celery headers the worker acts on. A message that fails is refused with the reason; the consumer
step (:mod:`cqrs_celery.replica.consumer`) dead-letters it and acknowledges it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from celery.worker.request import Request
from kombu.serialization import registry  # type: ignore[attr-defined]  # (not in kombu-stubs)

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import CLOCK_SKEW, JSON_CONTENT_TYPE, MAX_HOP, RECONCILE_TASK, TASK_NAME
from cqrs_celery.serialization import KOMBU_MARKER

#: Tasks a replica queue admits, with what their one argument is.
_TASKS = {TASK_NAME: 'the envelope', RECONCILE_TASK: 'a reconciliation step'}

#: Content encodings of a JSON body (Celery writes ``utf-8``).
_ENCODINGS = frozenset({'utf-8', 'utf8'})

#: What Celery may embed in a protocol 2 body; none of it may be set for the cqrs task.
_EMBED_KEYS = frozenset({'callbacks', 'errbacks', 'chain', 'chord'})

#: Headers that would make the worker run more than the envelope (Celery reads some of them into
#: the task's request context).
_FORBIDDEN_HEADERS = _EMBED_KEYS | {'link', 'link_error'}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a message may not reach the task: ``reason`` is the dead letter's short category."""

    reason: str
    message: str


def check(message: Any) -> Refusal | None:
    """Why ``message`` (a kombu message from a replica queue) must not reach the cqrs task, or None.

    Nothing here decodes with kombu: the body is parsed as strict JSON by the standard library only
    after its content type, size and encoding passed.
    """
    return inspect(message)[0]


def inspect(message: Any) -> tuple[Refusal | None, Any]:
    """``check``'s verdict with the body it parsed (None when refused), for a caller that reads it."""
    try:
        return _check(message)
    except Exception as exc:  # the gate itself must never be what stops a worker
        return Refusal('invalid message', f'the message could not be checked: {exc!r}'), None


def _check(message: Any) -> tuple[Refusal | None, Any]:
    headers = message.headers
    content_type = message.content_type
    encoding = str(message.content_encoding or '').lower()
    compression = headers.get('compression') if isinstance(headers, Mapping) else None
    if content_type != JSON_CONTENT_TYPE or encoding not in _ENCODINGS or compression:
        details = [registry.type_to_name.get(content_type), encoding or 'no encoding',
                   'compressed' if compression else None]
        shown = f'{content_type!r} ({", ".join(d for d in details if d)})'
        return Refusal('not json', f'content type {shown} refused: a replica queue accepts only uncompressed '
                                   f'{JSON_CONTENT_TYPE} in utf-8, whatever the Celery app accepts'), None
    if not isinstance(headers, Mapping):
        return Refusal('invalid message', f'message headers must be a mapping, not {type(headers).__name__}'), None
    task = headers.get('task')
    if task is None:
        return Refusal('invalid message', 'no task header: not a Celery task message of protocol 2'), None
    if task not in _TASKS:
        return Refusal('invalid message', f'task {_short(task)} does not belong on a replica queue '
                                          f'(only {" and ".join(sorted(_TASKS))} do)'), None
    limits = get_settings().replica
    body = message.body
    data = body.encode('utf-8', 'surrogatepass') if isinstance(body, str) else bytes(body or b'')
    if len(data) > limits.max_message_size:
        return Refusal('too large', f'the body has {len(data)} bytes, more than max_message_size '
                                    f'({limits.max_message_size})'), None
    parsed, refusal = _parse(data, limits.max_nesting_depth)
    refusal = refusal or _check_call(parsed, task) or _check_headers(headers, task)
    return refusal, None if refusal else parsed


class _NotANumber(ValueError):
    """A JSON text held NaN, Infinity, or a number too large for a float."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotANumber(text)
    return value


def _constant(text: str) -> float:
    raise _NotANumber(text)


#: Escapes after which a parsed string may hold what the bytes do not show: a UTF-16 surrogate
#: (``\ud800``) or an ASCII character (``\u005f``, which could spell a kombu type marker's key).
_HIDING_ESCAPE = re.compile(rb'\\u(?:[dD][89a-fA-F]|00[0-7])')


def _parse(data: bytes, max_depth: int) -> tuple[Any, Refusal | None]:
    try:
        parsed = json.loads(data.decode('utf-8'), parse_float=_finite, parse_constant=_constant)
    except RecursionError:
        return None, _too_deep(max_depth)
    except _NotANumber as exc:
        return None, Refusal('undecodable', f'{float(str(exc))!r} is not a JSON number')
    except (UnicodeDecodeError, ValueError) as exc:
        return None, Refusal('undecodable', f'the body is not JSON: {exc}')
    if b'__type__' in data or _HIDING_ESCAPE.search(data):
        return parsed, _walk(parsed, max_depth)  # every string and key must be looked at
    # Strict UTF-8 admits no surrogate and the parse no non-finite number: only the depth is left.
    return parsed, _too_deep(max_depth) if _deeper_than(parsed, max_depth) else None


def _deeper_than(parsed: Any, max_depth: int) -> bool:
    """Whether JSON arrays and objects nest deeper than ``max_depth`` in ``parsed``; scalars are skipped."""
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is not dict and kind is not list:
            continue
        if depth > max_depth:
            return True
        deeper = depth + 1
        stack.extend([(item, deeper) for item in (value.values() if kind is dict else value)
                      if type(item) is dict or type(item) is list])
    return False


def _too_deep(max_depth: int) -> Refusal:
    return Refusal('too deeply nested', f'JSON arrays and objects nest deeper than max_nesting_depth ({max_depth})')


def _walk(parsed: Any, max_depth: int) -> Refusal | None:
    """Nesting depth and strict JSON (finite numbers, text without lone surrogates), without recursion."""
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                return _too_deep(max_depth)
            if value.keys() == KOMBU_MARKER:
                return Refusal('undecodable', f'{_short(value)} is a kombu type marker, not plain JSON')
            for key, item in value.items():
                if not _is_text(key):
                    return Refusal('undecodable', f'key {_short(key)} is not valid Unicode (a lone surrogate)')
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > max_depth:
                return _too_deep(max_depth)
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if not _is_text(value):
                return Refusal('undecodable', f'string {_short(value)} is not valid Unicode (a lone surrogate)')
        elif isinstance(value, float) and not math.isfinite(value):
            return Refusal('undecodable', f'{value!r} is not a JSON number')
    return None


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _check_call(body: Any, task: str = TASK_NAME) -> Refusal | None:
    """The body of a protocol 2 task message calling a cqrs task with one argument, nothing else.

    The apply task's argument is the envelope; the reconciliation task's is a JSON object (a step,
    checked by the task itself).
    """
    if not isinstance(body, list) or len(body) != 3:
        return Refusal('invalid message', f'a task body is [args, kwargs, embed], not {_short(body)}')
    args, kwargs, embed = body
    if not isinstance(args, list) or len(args) != 1:
        count = len(args) if isinstance(args, list) else type(args).__name__
        return Refusal('invalid message', f'{task} takes exactly one positional argument, {_TASKS[task]} '
                                          f'(got {count})')
    if task != TASK_NAME and not isinstance(args[0], dict):
        return Refusal('invalid message', f'the argument of {task} must be an object, not {type(args[0]).__name__}')
    if kwargs != {}:
        keys = sorted(map(str, kwargs)) if isinstance(kwargs, dict) else type(kwargs).__name__
        return Refusal('invalid message', f'{task} takes no keyword arguments (got {_short(keys)})')
    if embed is not None and not isinstance(embed, dict):
        return Refusal('invalid message', f'the embed part must be an object, not {type(embed).__name__}')
    unexpected = sorted(key for key, value in (embed or {}).items() if key not in _EMBED_KEYS or value)
    if unexpected:
        return Refusal('invalid message', f'callbacks, errbacks, chains and chords are not allowed on {task} '
                                          f'(embed sets {", ".join(unexpected)})')
    return None


def _optional(kind: type | tuple[type, ...]) -> Callable[[Any], bool]:
    return lambda value: value is None or (isinstance(value, kind) and not isinstance(value, bool))


def _count(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _no_time_limits(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple) and len(value) == 2 and all(v is None for v in value))


def _eta(value: Any) -> bool:
    """None, or a time at most one retry hop ahead: the worker holds a message unacknowledged until its eta."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        parsed = maybe_iso8601(value)
        return parsed is not None and 0 < parsed.timestamp() <= time.time() + MAX_HOP + CLOCK_SKEW
    except (ValueError, TypeError, OverflowError, OSError):
        return False


#: Headers Celery acts on, each with the shape it needs (unknown headers pass: Celery ignores them).
_HEADER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'id': (lambda value: isinstance(value, str) and bool(value), 'a non-empty string'),
    'lang': (_optional(str), 'a string or null'),
    'root_id': (_optional(str), 'a string or null'),
    'parent_id': (_optional(str), 'a string or null'),
    'group': (_optional(str), 'a string or null'),
    'shadow': (_optional(str), 'a string or null'),
    'origin': (_optional(str), 'a string or null'),
    'argsrepr': (_optional(str), 'a string or null'),
    'kwargsrepr': (_optional(str), 'a string or null'),
    'retries': (_count, 'a non-negative integer'),
    'group_index': (_count, 'a non-negative integer or null'),
    'replaced_task_nesting': (_count, 'a non-negative integer or null'),
    'ignore_result': (lambda value: value is None or isinstance(value, bool), 'true, false or null'),
    'timelimit': (_no_time_limits, "null or [null, null] (the replica's own time limits apply)"),
    'eta': (_eta, f'null or an ISO-8601 date and time at most {MAX_HOP + CLOCK_SKEW:.0f} s ahead (one retry hop)'),
    'expires': (lambda value: value is None, "null (an envelope's expiry travels in the envelope)"),
    'stamped_headers': (lambda value: value is None or (isinstance(value, list) and all(
        isinstance(v, str) for v in value)), 'a list of strings or null'),
    'stamps': (_optional(dict), 'an object or null'),
}


def _check_headers(headers: Mapping[Any, Any], task: str = TASK_NAME) -> Refusal | None:
    if 'id' not in headers:
        return Refusal('invalid message', 'the id header is missing')
    for key, (valid, shape) in _HEADER_RULES.items():
        if key in headers and not valid(headers[key]):
            return Refusal('invalid message', f'header {key} = {_short(headers[key])} must be {shape}')
    smuggled = sorted(str(key) for key in _FORBIDDEN_HEADERS if headers.get(key))
    if smuggled:
        return Refusal('invalid message', f'headers {", ".join(smuggled)} are not allowed on {task}')
    return None


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f'{text[:limit]}…'


class GuardedRequest(Request):
    """The cqrs task's Celery request: a message Celery cannot build a request from is an invalid task.

    Celery stops the worker on errors other than ``InvalidTaskError`` raised while it builds a
    request; here they become ``InvalidTaskError``, which the consumer step dead-letters. A body that
    is not JSON is refused before Celery's request decodes it.
    """

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        if message.content_type != JSON_CONTENT_TYPE:
            raise InvalidTaskError(f'content type {message.content_type!r} refused; only {JSON_CONTENT_TYPE} '
                                   'is accepted')
        try:
            super().__init__(message, *args, **kwargs)
        except InvalidTaskError:
            raise
        except Exception as exc:
            raise InvalidTaskError(f'Celery cannot build a request from this message: {exc!r}') from exc
