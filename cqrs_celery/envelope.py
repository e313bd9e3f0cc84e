"""The wire format: a frozen, versioned envelope, the only thing the Celery task carries.

``Envelope.to_wire()`` gives the JSON-safe dict sent as the task's single argument;
``decode()`` turns whatever a replica received back into an ``Envelope`` or raises
``EnvelopeError`` (keeping the raw body) saying exactly what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import ujson
from dateutil import parser as date_parser

from cqrs_celery.constants import ENVELOPE_VERSION, FIELD_REVISION, SUPPORTED_ENVELOPE_VERSIONS, SignalType
from cqrs_celery.exceptions import EnvelopeError, UnsupportedVersionError


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One change of one master row."""

    signal_type: SignalType
    cqrs_id: str
    instance_pk: Any
    instance_data: dict[str, Any]
    previous_data: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    correlation_id: str | None = None
    queue: str | None = None
    expires: datetime.datetime | None = None
    retries: int = 0
    v: int = ENVELOPE_VERSION

    @property
    def revision(self) -> int | None:
        """The master revision this envelope carries."""
        value = self.instance_data.get(FIELD_REVISION)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def is_directed(self) -> bool:
        """True for a SYNC sent to one replica queue rather than to every replica."""
        return self.queue is not None

    def is_expired(self, now: datetime.datetime | None = None) -> bool:
        if self.expires is None:
            return False
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return now >= self.expires

    def replace(self, **changes: Any) -> Envelope:
        return dataclasses.replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-safe dict that travels as the task argument."""
        return {
            'v': self.v,
            'signal_type': self.signal_type.value,
            'cqrs_id': self.cqrs_id,
            'instance_pk': self.instance_pk,
            'instance_data': self.instance_data,
            'previous_data': self.previous_data,
            'meta': self.meta,
            'correlation_id': self.correlation_id,
            'queue': self.queue,
            'expires': self.expires.isoformat() if self.expires else None,
            'retries': self.retries,
        }

    def log_fields(self) -> dict[str, Any]:
        """The fields every log line about this envelope carries."""
        return {'cqrs_id': self.cqrs_id, 'pk': self.instance_pk, 'revision': self.revision,
                'correlation_id': self.correlation_id}


_REQUIRED = ('v', 'signal_type', 'cqrs_id', 'instance_pk', 'instance_data')


def decode(raw: Any) -> Envelope:
    """An ``Envelope`` from a received task argument (a dict, or JSON text/bytes).

    Raises:
        UnsupportedVersionError: ``v`` is not a version this release applies.
        EnvelopeError: anything else is wrong; ``raw`` is kept on the exception.
    """
    body = raw
    if isinstance(body, bytes | str):
        try:
            body = ujson.loads(body)
        except (ValueError, TypeError) as exc:
            raise EnvelopeError(f'envelope is not JSON: {exc}', raw) from exc
    if not isinstance(body, Mapping):
        raise EnvelopeError(f'envelope must be a JSON object, not {type(body).__name__}', raw)
    missing = [key for key in _REQUIRED if key not in body]
    if missing:
        raise EnvelopeError(f'envelope lacks required keys: {", ".join(missing)}', raw)
    version = body['v']
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_ENVELOPE_VERSIONS:
        raise UnsupportedVersionError(
            f'envelope version {version!r} is not supported (this replica applies '
            f'{", ".join(map(str, sorted(SUPPORTED_ENVELOPE_VERSIONS)))}); upgrade cqrs_celery here',
            raw,
        )
    try:
        signal_type = SignalType(body['signal_type'])
    except ValueError:
        raise EnvelopeError(f'unknown signal_type {body["signal_type"]!r}', raw) from None
    cqrs_id = body['cqrs_id']
    if not isinstance(cqrs_id, str) or not cqrs_id:
        raise EnvelopeError(f'cqrs_id must be a non-empty string, not {cqrs_id!r}', raw)
    data = body['instance_data']
    if not isinstance(data, Mapping):
        raise EnvelopeError('instance_data must be an object', raw)
    revision = data.get(FIELD_REVISION)
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise EnvelopeError(f'instance_data.{FIELD_REVISION} must be an integer, not {revision!r}', raw)
    for key in ('previous_data', 'meta'):
        if body.get(key) is not None and not isinstance(body[key], Mapping):
            raise EnvelopeError(f'{key} must be an object or null', raw)
    queue = body.get('queue')
    if queue is not None and not isinstance(queue, str):
        raise EnvelopeError(f'queue must be a string or null, not {queue!r}', raw)
    retries = body.get('retries', 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise EnvelopeError(f'retries must be a non-negative integer, not {retries!r}', raw)
    return Envelope(
        v=version,
        signal_type=signal_type,
        cqrs_id=cqrs_id,
        instance_pk=body['instance_pk'],
        instance_data=dict(data),
        previous_data=dict(body['previous_data']) if body.get('previous_data') is not None else None,
        meta=dict(body['meta']) if body.get('meta') is not None else None,
        correlation_id=_optional_str(body.get('correlation_id')),
        queue=queue,
        expires=_parse_expires(body.get('expires'), raw),
        retries=retries,
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_expires(value: Any, raw: Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        parsed = date_parser.isoparse(value)
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f'expires must be an ISO-8601 datetime, not {value!r}', raw) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def dumps(envelope: Envelope) -> str:
    """The envelope as JSON text (for dumps, fixtures and the outbox)."""
    return ujson.dumps(envelope.to_wire(), ensure_ascii=False)
