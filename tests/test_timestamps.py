"""The publisher's reads load ``timestamptz`` with psycopg's C loader (master/timestamps.py): the
same values as Django's own loader, and Django's loader back afterwards."""

import datetime

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import override_settings

from cqrs_celery.master.timestamps import TIMESTAMPTZ_OID, UtcTimestampLoader, utc_loader
from tests.master_app.models import AllFields

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(settings.DATABASE_KIND != 'postgres', reason='psycopg 3 and PostgreSQL')]

MOMENTS = [
    datetime.datetime(2026, 11, 30, 4, 29, 15, 358414, tzinfo=datetime.timezone.utc),
    datetime.datetime(1, 1, 1, 0, 0, tzinfo=datetime.timezone.utc),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 3, 29, 2, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
    datetime.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=datetime.timezone.utc),
]


def loader() -> type:
    return connection.connection.adapters.get_loader(TIMESTAMPTZ_OID, 0)


def read() -> list[tuple[int, datetime.datetime | None, datetime.datetime]]:
    return [(row.pk, row.moment, row.cqrs_updated) for row in AllFields.objects.order_by('pk')]


def test_rows_read_inside_are_the_rows_django_reads():
    for moment in [*MOMENTS, None]:
        AllFields.objects.create(moment=moment)
    django_rows = read()
    with utc_loader(connection):
        assert loader() is UtcTimestampLoader
        fast_rows = read()
    assert fast_rows == django_rows
    for fast, slow in zip(fast_rows, django_rows, strict=True):
        for a, b in zip(fast[1:], slow[1:], strict=True):
            assert a is None and b is None or (a.tzinfo is b.tzinfo is datetime.timezone.utc
                                               and a.isoformat() == b.isoformat())
    assert loader() is not UtcTimestampLoader, "Django's loader is back"


def test_django_s_loader_is_back_after_an_error():
    connection.ensure_connection()
    before = loader()
    with pytest.raises(ZeroDivisionError), utc_loader(connection):
        _ = 1 / 0
    assert loader() is before


@pytest.fixture(params=['USE_TZ = False', "DATABASES TIME_ZONE 'Europe/Paris'"])
def other_time_zone(request, monkeypatch):
    """A connection whose datetimes Django's loader makes differently (opened afresh, closed after)."""
    if request.param.startswith('USE_TZ'):
        context = override_settings(USE_TZ=False)
    else:
        monkeypatch.setitem(connection.settings_dict, 'TIME_ZONE', 'Europe/Paris')
        context = override_settings()

    def forget() -> None:
        connection.close()
        for name in ('timezone', 'timezone_name'):
            connections['default'].__dict__.pop(name, None)  # cached properties of the wrapper

    with context:
        forget()
        yield
        forget()


def test_nothing_changes_where_django_s_values_would_differ(other_time_zone):
    connection.ensure_connection()
    before = loader()
    with utc_loader(connection):
        assert loader() is before
