"""Digests both sides compute alike: a row's content, its (pk, revision, content) hash, pk buckets.

Everything is computed from the JSON form of values (what travels in envelopes), normalised by
the *kind* of the replica's field, so the master (serializing its rows) and the replica (reading
its copy) reach the same text for the same value. Digests are 64-bit integers and a bucket's
digest is the **sum** of its rows' digests modulo 2**64: order does not matter, a whole-table
digest is the sum of the bucket digests, and one differing row changes its bucket's sum.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models
from django.utils.dateparse import parse_duration

from cqrs_celery.models import pk_key

#: Digests are sums modulo this.
MODULUS = 2 ** 64

#: Rows a bucket should hold at least (buckets are a power of two: 16–32 rows each on average).
ROWS_PER_BUCKET = 16

#: Kinds of field values, by Django's internal field type (everything else is compared as text).
_KINDS = {
    'AutoField': 'int', 'BigAutoField': 'int', 'SmallAutoField': 'int', 'IntegerField': 'int',
    'BigIntegerField': 'int', 'SmallIntegerField': 'int', 'PositiveIntegerField': 'int',
    'PositiveBigIntegerField': 'int', 'PositiveSmallIntegerField': 'int',
    'DecimalField': 'decimal', 'FloatField': 'float', 'BooleanField': 'bool', 'NullBooleanField': 'bool',
    'DateTimeField': 'datetime', 'DateField': 'date', 'TimeField': 'time', 'DurationField': 'duration',
    'UUIDField': 'uuid', 'BinaryField': 'bytes', 'JSONField': 'json',
}

KINDS = frozenset({*_KINDS.values(), 'str'})


def field_kind(field: Any) -> str:
    """How a value of ``field`` is normalised (a foreign key by its target's field)."""
    target = field.target_field if getattr(field, 'is_relation', False) and field.target_field else field
    if isinstance(target, models.JSONField):
        return 'json'
    return _KINDS.get(target.get_internal_type(), 'str')


def canonical(kind: str, value: Any) -> str:
    """The normalised text of a JSON-form ``value`` of a field of ``kind``.

    Both sides give the same text for the same stored value: Decimal without trailing zeros,
    datetimes in UTC, UUIDs lower-case, JSON with sorted keys, floats by ``repr``. A value that
    does not parse as its kind is kept as its JSON text (it then differs, which is drift).
    """
    if value is None:
        return '~'
    try:
        return _canonical(kind, value)
    except (ValueError, TypeError, ArithmeticError, OverflowError):
        return '!' + json.dumps(value, sort_keys=True, default=str)


def _canonical(kind: str, value: Any) -> str:
    if kind == 'int':
        if isinstance(value, bool):
            raise TypeError('a boolean')
        return str(int(value))
    if kind == 'decimal':
        number = decimal.Decimal(str(value))
        return format(number.normalize(), 'f') if number.is_finite() else str(number)
    if kind == 'float':
        return repr(float(value))
    if kind == 'bool':
        return 'true' if value in (True, 'true', 'True', 1) else 'false'
    if kind == 'datetime':
        moment = value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.astimezone(datetime.timezone.utc).isoformat()
    if kind == 'date':
        return datetime.date.fromisoformat(str(value)[:10]).isoformat()
    if kind == 'time':
        return datetime.time.fromisoformat(str(value)).isoformat()
    if kind == 'duration':
        duration = value if isinstance(value, datetime.timedelta) else parse_duration(str(value))
        if duration is None:
            raise ValueError('not a duration')
        return str(duration // datetime.timedelta(microseconds=1))
    if kind == 'uuid':
        return str(uuid.UUID(str(value)))
    if kind == 'bytes':
        return base64.b64encode(base64.b64decode(value)).decode('ascii') if isinstance(value, str) else \
            base64.b64encode(bytes(value)).decode('ascii')
    if kind == 'json':
        return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    return str(value)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=8).digest(), 'big')


def content_digest(values: Iterable[tuple[str, str, Any]]) -> str:
    """Digest (16 hex digits) of a row's compared fields: ``(master key, kind, JSON value)`` triples."""
    text = '\x1f'.join(f'{key}\x1e{canonical(kind, value)}' for key, kind, value in sorted(values))
    return f'{_hash(text):016x}'


def row_digest(key: str, revision: int, content: str = '') -> int:
    """The 64-bit digest of one row: its pk text (``pk_key``), revision and content digest."""
    return _hash(f'{key}\x00{revision}\x00{content}')


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a pk text: a stable hash of it, modulo ``buckets`` (a power of two)."""
    return _hash(f'bucket\x00{key}') % buckets


def bucket_count(rows: int) -> int:
    """Buckets for a table of ``rows`` rows: a power of two, ~16–32 rows per bucket."""
    count = 1
    while count * 2 * ROWS_PER_BUCKET <= rows:
        count *= 2
    return count


def key_of(pk: Any) -> str:
    """The text a JSON-form primary key is hashed as (the same as tombstones use)."""
    return pk_key(pk)


@dataclasses.dataclass
class Summary:
    """A table summarised: row count, the sum of every row digest, and each bucket's sum."""

    buckets: int
    count: int = 0
    total: int = 0
    sums: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sums:
            self.sums = [0] * self.buckets

    def add(self, key: str, digest: int) -> None:
        self.count += 1
        self.total = (self.total + digest) % MODULUS
        self.sums[bucket_of(key, self.buckets)] = (self.sums[bucket_of(key, self.buckets)] + digest) % MODULUS

    @property
    def digest(self) -> str:
        """The whole table: row count and digest sum."""
        return f'{self.count}:{self.total:016x}'


def encode_sums(sums: list[int]) -> str:
    """Bucket sums as compact text (base64 of 8 bytes each)."""
    return base64.b64encode(b''.join(s.to_bytes(8, 'big') for s in sums)).decode('ascii')


def decode_sums(text: str, buckets: int) -> list[int]:
    """The bucket sums ``encode_sums`` wrote; ``ValueError`` unless there are ``buckets`` of them."""
    raw = base64.b64decode(text.encode('ascii'), validate=True)
    if len(raw) != 8 * buckets:
        raise ValueError(f'{len(raw)} bytes do not hold {buckets} bucket digests')
    return [int.from_bytes(raw[i:i + 8], 'big') for i in range(0, len(raw), 8)]


def differing(mine: list[int], theirs: list[int]) -> list[int]:
    """Indexes of the buckets whose sums differ."""
    return [index for index, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]


def resolve_key(key: str, available: Mapping[str, Any] | Iterable[str]) -> str | None:
    """The key of master data that a replica field named ``key`` receives its value from, or None.

    As when applying (``serialization.field_for_key``): the same name, or ``author`` for a plain
    ``author_id`` column.
    """
    names = set(available)
    if key in names:
        return key
    if key.endswith('_id') and key[:-3] in names:
        return key[:-3]
    return None
