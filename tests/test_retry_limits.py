"""Retry arithmetic at the edges (issue 8.7): any retry count, and no retry limit at all, gives a
finite delay and a retry on this service's queue; a failing envelope is never lost to an overflow.

Tier i: the task runs in this process; retries and dead letters are captured instead of published.
"""

import pytest
import ujson
from django.conf import settings
from django.test import override_settings

from cqrs_celery import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.replica.tasks import apply_envelope
from tests.replica_app.models import ReplicaItem

THIS_QUEUE = settings.CQRS['queue']


def replica_settings(**replica):
    return override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS['replica'], **replica}})


@pytest.fixture
def captured(letters, retries):
    """Retries and dead letters the task sends, instead of publishing them (the shared fixtures)."""
    return {'retries': retries, 'letters': letters}


@pytest.fixture
def failing_create(monkeypatch):
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        raise RuntimeError('replica database is read-only')

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(cqrs_create))


def wire(retries):
    data = {'sku': 'A', 'name': 'apple', 'quantity': 1, 'cqrs_revision': 0,
            'cqrs_updated': '2024-05-06T07:08:09.123456+00:00'}
    envelope = Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk='A', instance_data=data,
                        retries=retries)
    return ujson.loads(ujson.dumps(envelope.to_wire()))


@pytest.mark.parametrize('retry', [1023, 1024, 1025, 10 ** 6, 10 ** 18])
@pytest.mark.parametrize(('delay', 'backoff', 'longest'), [(2, 2.0, 300), (0.2, 2, 2), (1, 10, 86400)])
def test_the_delay_of_any_high_retry_is_the_maximum_without_overflow(retry, delay, backoff, longest):
    with replica_settings(CQRS_RETRY_DELAY=delay, retry_backoff=backoff, retry_backoff_max=longest,
                          retry_jitter=False):
        assert ReplicaItem.get_cqrs_retry_delay(retry) == longest


@pytest.mark.parametrize(('delay', 'backoff', 'longest'), [(1e-300, 1.5, 1e8), (5e-324, 1.0001, 3600),
                                                           (5e-324, 2, 315360000)])
def test_vanishing_base_delays_still_grow_to_the_maximum_without_overflow(delay, backoff, longest):
    with replica_settings(CQRS_RETRY_DELAY=delay, retry_backoff=backoff, retry_backoff_max=longest,
                          retry_jitter=False):
        delays = [ReplicaItem.get_cqrs_retry_delay(retry) for retry in (0, 10, 1023, 1024, 10 ** 6, 10 ** 18)]

    assert delays == sorted(delays)
    assert all(0 < d <= longest for d in delays)
    assert delays[-1] == pytest.approx(longest)


@pytest.mark.django_db
@pytest.mark.parametrize('max_retries', [10 ** 6, None], ids=['a-million', 'no-limit'])
@pytest.mark.parametrize('tried', [1024, 10 ** 6 - 1])
def test_a_failure_at_a_high_retry_count_is_retried_on_this_queue_not_lost(captured, failing_create, max_retries,
                                                                           tried):
    with replica_settings(CQRS_MAX_RETRIES=max_retries, CQRS_RETRY_DELAY=2, retry_backoff=2,
                          retry_backoff_max=300, retry_jitter=False):
        outcome = apply_envelope.run(wire(tried))

    assert outcome == 'retrying'
    [(envelope, route_to, countdown)] = captured['retries']
    assert (envelope.retries, route_to, countdown) == (tried + 1, THIS_QUEUE, 300)
    assert captured['letters'] == []


@pytest.mark.django_db
def test_without_a_retry_limit_the_model_keeps_retrying(captured, failing_create):
    with replica_settings(CQRS_MAX_RETRIES=None):
        assert ReplicaItem.should_retry_cqrs(10 ** 12) is True
        assert apply_envelope.run(wire(10 ** 9)) == 'retrying'
