"""Reading ``timestamptz`` columns in C while the publisher reads rows (PostgreSQL with psycopg 3).

Django loads every ``timestamptz`` value through a loader written in Python (it pins the value's
time zone to the connection's): about 3 µs a value, 7.5 % of the publisher thread's profile on the
benchmark's row (every master row has ``cqrs_updated``). With ``USE_TZ`` and
the connection in UTC, psycopg's own loader, written in C, gives the very same value
(``datetime`` in ``datetime.timezone.utc``) ten times faster.

:func:`utc_loader` puts it on the connection for the duration of the publisher's reads and puts
Django's back afterwards. Anywhere else (psycopg 2, psycopg without its C module, ``USE_TZ =
False``, a ``TIME_ZONE`` in the database settings, a session in another time zone) it does nothing.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

try:  # psycopg 3 with its C module (psycopg[binary] or psycopg[c])
    from psycopg._cmodule import _psycopg
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    _C_LOADER: Any = getattr(_psycopg, 'TimestamptzLoader', None)
except ImportError:  # pragma: no cover - psycopg 2, or no psycopg at all
    _C_LOADER = None

_UTC = datetime.timezone.utc
#: pg_type oid of ``timestamptz``.
TIMESTAMPTZ_OID = 1184

if _C_LOADER is not None:

    class UtcTimestampLoader(Loader):
        """psycopg's C ``timestamptz`` loader, with the ``timezone`` attribute Django's cursors check.

        (The C class cannot be subclassed: each instance calls it through its ``load`` attribute.)
        """

        timezone = _UTC

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self.load = _C_LOADER(oid, context).load  # type: ignore[method-assign]

        def load(self, data: Any) -> Any:  # pragma: no cover - replaced per instance above
            raise NotImplementedError


@contextlib.contextmanager
def utc_loader(connection: Any) -> Iterator[None]:
    """Within the block, cursors of Django ``connection`` load ``timestamptz`` with psycopg's C loader
    (only where the value is the same as Django's: see the module's docstring)."""
    raw: Any = None
    if connection.vendor == 'postgresql' and _C_LOADER is not None:
        connection.ensure_connection()
        raw = connection.connection
    adapters = getattr(raw, 'adapters', None)
    if adapters is None:
        yield
        return
    try:
        current = adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
        swap = (getattr(current, 'timezone', None) is _UTC and connection.timezone is _UTC
                and raw.info.timezone is _UTC)
    except Exception:  # an adapters map or connection of another kind: leave it alone
        swap = False
    if not swap:
        yield
        return
    adapters.register_loader(TIMESTAMPTZ_OID, UtcTimestampLoader)
    try:
        yield
    finally:
        adapters.register_loader(TIMESTAMPTZ_OID, current)
