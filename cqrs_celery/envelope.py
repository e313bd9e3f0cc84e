"""The wire format: a frozen, versioned envelope, the only thing the Celery task carries.

Two schema versions travel as the task's single argument:

* v1, one row: ``Envelope.to_wire()`` (retries, directed syncs, dead letters);
* v2, a batch: ``encode_batch()`` puts many rows of one CQRS_ID in one message, with the fields
  they share (``cqrs_id``, ``queue``, ``expires``, ``retries``) once and a ``rows`` list.

``decode()`` turns a v1 body back into an ``Envelope``; ``decode_message()`` accepts both and
gives one ``Envelope`` per row, or the ``EnvelopeError`` of a bad row, so one bad row never
spoils the others. Errors keep the raw body and say exactly what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ujson
from dateutil import parser as date_parser

from cqrs_celery import sharing
from cqrs_celery.constants import (
    BATCH_VERSION,
    ENVELOPE_VERSION,
    FIELD_REVISION,
    SUPPORTED_ENVELOPE_VERSIONS,
    SignalType,
)
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
    #: A directed SYNC that applies even when the replica holds a higher revision (repairs a replica
    #: that is ahead of its master, e.g. after the master was restored from a backup).
    forced: bool = False
    #: A retry is not applied before this time (a long back-off travels as several short hops, so a
    #: message never waits unacknowledged in a worker for longer than the broker allows).
    not_before: datetime.datetime | None = None
    v: int = ENVELOPE_VERSION

    @classmethod
    def fast(cls, **fields: Any) -> Envelope:
        """``Envelope(**fields)`` for the publisher's rows, without the frozen dataclass's
        ``object.__setattr__`` per field (1.8 µs instead of the constructor's 3.5, measured on the
        bench model's rows). ``fields`` are not checked: the publisher gives every required one,
        with the types they declare.
        """
        envelope = object.__new__(cls)
        envelope.__dict__.update(_DEFAULTS, **fields)
        return envelope

    @property
    def revision(self) -> int | None:
        """The master revision this envelope carries."""
        value = self.instance_data.get(FIELD_REVISION)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def pk(self) -> Any:
        """``instance_pk`` under django-cqrs's payload name (``TransportPayload.pk``)."""
        return self.instance_pk

    def to_dict(self) -> dict[str, Any]:
        """django-cqrs's payload name for :meth:`to_wire`."""
        return self.to_wire()

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
        """The JSON-safe v1 dict that travels as the task argument."""
        wire = {
            'v': ENVELOPE_VERSION,
            'cqrs_id': self.cqrs_id,
            **self.row_wire(),
            'queue': self.queue,
            'expires': self.expires.isoformat() if self.expires else None,
            'retries': self.retries,
        }
        if self.not_before is not None:
            wire['not_before'] = self.not_before.isoformat()
        return wire

    def row_wire(self) -> dict[str, Any]:
        """The fields of this row alone, as a v2 batch carries them."""
        row = {
            'signal_type': self.signal_type.value,
            'instance_pk': self.instance_pk,
            'instance_data': self.instance_data,
            'previous_data': self.previous_data,
            'meta': self.meta,
            'correlation_id': self.correlation_id,
        }
        if self.forced:
            row['forced'] = True
        return row

    def log_fields(self) -> dict[str, Any]:
        """The fields every log line about this envelope carries."""
        return {'cqrs_id': self.cqrs_id, 'pk': self.instance_pk, 'revision': self.revision,
                'correlation_id': self.correlation_id}


#: The default of each field that has one (what ``Envelope.fast`` starts from).
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Envelope)
             if field.default is not dataclasses.MISSING}

_REQUIRED = ('v', 'signal_type', 'cqrs_id', 'instance_pk', 'instance_data')


def decode(raw: Any) -> Envelope:
    """An ``Envelope`` from a received task argument (a dict, or JSON text/bytes).

    Raises:
        UnsupportedVersionError: ``v`` is not a version this release applies.
        EnvelopeError: anything else is wrong; ``raw`` is kept on the exception.
    """
    body = _parsed(raw)
    missing = [key for key in _REQUIRED if key not in body]
    if missing:
        raise EnvelopeError(f'envelope lacks required keys: {", ".join(missing)}', raw)
    version = body['v']
    if version == BATCH_VERSION and not isinstance(version, bool):
        raise EnvelopeError('a v2 batch holds several rows: decode it with decode_message()', raw)
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_ENVELOPE_VERSIONS:
        raise UnsupportedVersionError(
            f'envelope version {version!r} is not supported (this replica applies '
            f'{", ".join(map(str, sorted(SUPPORTED_ENVELOPE_VERSIONS)))}); upgrade cqrs_celery here',
            raw,
        )
    signal_type = _SIGNAL_TYPES.get(body['signal_type']) if isinstance(body['signal_type'], str) else None
    if signal_type is None:
        raise EnvelopeError(f'unknown signal_type {body["signal_type"]!r}', raw)
    cqrs_id = body['cqrs_id']
    if not isinstance(cqrs_id, str) or not cqrs_id:
        raise EnvelopeError(f'cqrs_id must be a non-empty string, not {cqrs_id!r}', raw)
    _check_pk(body['instance_pk'], raw)
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
    if retries is None:
        retries = 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise EnvelopeError(f'retries must be a non-negative integer, not {retries!r}', raw)
    forced = body.get('forced', False)
    if not isinstance(forced, bool) or (forced and (signal_type != SignalType.SYNC or queue is None)):
        raise EnvelopeError('forced must be a boolean, and only a SYNC directed to one queue can be forced', raw)
    return _checked_envelope(
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
        forced=forced,
        not_before=_parse_time('not_before', body.get('not_before'), raw),
    )


#: ``SignalType`` by its text (an Enum call costs as much as the rest of a row's checks).
_SIGNAL_TYPES = {signal.value: signal for signal in SignalType}
_FIELDS = frozenset(field.name for field in dataclasses.fields(Envelope))


def _checked_envelope(**fields: Any) -> Envelope:
    """An ``Envelope`` of ``fields`` (every field given, each already checked by ``decode``).

    The frozen dataclass's ``__init__`` sets its thirteen fields one ``object.__setattr__`` at a
    time, which was a third of decoding a batch row; a decoded row sets them all at once.
    """
    assert fields.keys() == _FIELDS
    envelope = object.__new__(Envelope)
    envelope.__dict__.update(fields)
    return envelope


def encode_batch(envelopes: Sequence[Envelope]) -> dict[str, Any]:
    """One v2 message for ``envelopes``, rows of one CQRS_ID with the same queue, expiry and retries."""
    first = envelopes[0]
    return {
        'v': BATCH_VERSION,
        'cqrs_id': first.cqrs_id,
        'queue': first.queue,
        'expires': first.expires.isoformat() if first.expires else None,
        'retries': first.retries,
        'rows': _wire_rows(envelopes),
    }


def _wire_rows(envelopes: Sequence[Envelope]) -> list[dict[str, Any]]:
    rows = []
    for index, envelope in enumerate(envelopes):
        if index % sharing.WIRE_ROWS_A_SLICE == sharing.WIRE_ROWS_A_SLICE - 1:
            sharing.offer()  # (a batch of hundreds of rows: the process's other threads would wait)
        rows.append(envelope.row_wire())
    return rows


def decode_message(raw: Any) -> list[Envelope | EnvelopeError]:
    """Every row of a received v1 or v2 message: an ``Envelope``, or the error of a bad row.

    Raises:
        EnvelopeError: the message as a whole is unusable (not JSON, not an object, unknown
            version, a v2 header that is wrong); ``raw`` is kept on the exception.
    """
    body = _parsed(raw)
    if body.get('v') != BATCH_VERSION or isinstance(body.get('v'), bool):
        return [decode(body)]
    rows = body.get('rows')
    if not isinstance(rows, list) or not rows:
        raise EnvelopeError('a batch needs a non-empty list of rows', raw)
    shared = {key: body.get(key) for key in ('cqrs_id', 'queue', 'expires', 'retries')}
    shared['v'] = ENVELOPE_VERSION
    decoded: list[Envelope | EnvelopeError] = []
    for row in rows:
        if not isinstance(row, Mapping):
            decoded.append(EnvelopeError(f'a batch row must be an object, not {type(row).__name__}', row))
            continue
        try:
            decoded.append(decode({**row, **shared}))
        except EnvelopeError as exc:
            decoded.append(exc)
    return decoded


def _parsed(raw: Any) -> Mapping[str, Any]:
    body = raw
    if isinstance(body, bytes | str):
        try:
            body = ujson.loads(body)
        except (ValueError, TypeError) as exc:
            raise EnvelopeError(f'envelope is not JSON: {exc}', raw) from exc
    if not isinstance(body, Mapping):
        raise EnvelopeError(f'envelope must be a JSON object, not {type(body).__name__}', raw)
    return body


def _check_pk(pk: Any, raw: Any) -> None:
    """``instance_pk`` is one JSON scalar a primary key can be: text (valid Unicode) or a number."""
    if isinstance(pk, bool) or not isinstance(pk, str | int | float):
        raise EnvelopeError(f'instance_pk must be a string or a number, not {type(pk).__name__}', raw)
    if isinstance(pk, float) and not math.isfinite(pk):
        raise EnvelopeError(f'instance_pk must be a finite number, not {pk!r}', raw)
    if isinstance(pk, str):
        try:
            pk.encode('utf-8')
        except UnicodeEncodeError:
            raise EnvelopeError('instance_pk is not valid Unicode (a lone surrogate)', raw) from None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_expires(value: Any, raw: Any) -> datetime.datetime | None:
    return _parse_time('expires', value, raw)


def _parse_time(key: str, value: Any, raw: Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        parsed = date_parser.isoparse(value)
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f'{key} must be an ISO-8601 datetime, not {value!r}', raw) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def dumps(envelope: Envelope) -> str:
    """The envelope as JSON text (for dumps, fixtures and the outbox)."""
    return ujson.dumps(envelope.to_wire(), ensure_ascii=False)
