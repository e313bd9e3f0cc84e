"""The retry policy (DESIGN §8): exponential, capped, jittered delays, a retry limit, and delays kept
below the Redis visibility timeout so a delayed retry cannot loop.

Tier i: Celery apps are built with broker URLs that nothing listens on; no connection is opened.
"""

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings
from kombu import Connection

from cqrs_celery.conf import get_settings
from cqrs_celery.replica import mixins, queues
from cqrs_celery.replica.consumer import DeadLetterInvalidMessages
from tests.replica_app.models import ManualNoteSink, ReplicaItem

AMQP_URL = 'amqp://guest:guest@127.0.0.1:1//'
REDIS_URL = 'redis://127.0.0.1:1/0'


def cqrs_replica_settings(**replica):
    """``override_settings`` of the ``CQRS['replica']`` section, keeping the rest of the test settings."""
    return override_settings(CQRS={**settings.CQRS, 'replica': {**settings.CQRS.get('replica', {}), **replica}})


@pytest.fixture(autouse=True)
def no_broker_connection(monkeypatch):
    """Fail any test that would open a broker connection."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f'a broker connection was opened to {self.as_uri()}')

    monkeypatch.setattr(Connection, '_connection_factory', refuse)


def celery_app(broker_url, **conf):
    app = Celery('retry_policy_tests', broker=broker_url, set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize('url', [AMQP_URL, REDIS_URL])
def test_these_tests_would_notice_a_broker_connection(url):
    with pytest.raises(AssertionError, match='a broker connection was opened'):
        celery_app(url).connection_for_write().ensure_connection(max_retries=1)


# --- get_cqrs_retry_delay --------------------------------------------------------------------


@pytest.mark.parametrize(('retry', 'delay'), [(0, 2), (1, 6), (2, 18), (3, 54), (4, 100), (10, 100)])
def test_the_delay_grows_by_the_backoff_factor_up_to_the_maximum(retry, delay):
    with cqrs_replica_settings(CQRS_RETRY_DELAY=2, retry_backoff=3, retry_backoff_max=100, retry_jitter=False):
        assert ReplicaItem.get_cqrs_retry_delay(retry) == delay


@pytest.mark.parametrize('retry', [0, 1, 5, 30])
def test_a_backoff_of_one_gives_a_constant_delay(retry):
    with cqrs_replica_settings(CQRS_RETRY_DELAY=1.5, retry_backoff=1, retry_backoff_max=100, retry_jitter=False):
        assert ReplicaItem.get_cqrs_retry_delay(retry) == 1.5


def test_the_defaults_double_from_two_seconds_up_to_five_minutes():
    with override_settings(CQRS={'app': settings.CQRS['app'], 'replica': {'retry_jitter': False}}):
        assert [ReplicaItem.get_cqrs_retry_delay(n) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_a_huge_retry_count_is_still_capped():
    with cqrs_replica_settings(CQRS_RETRY_DELAY=2, retry_backoff=2, retry_backoff_max=300, retry_jitter=False):
        assert ReplicaItem.get_cqrs_retry_delay(1000) == 300


@pytest.mark.parametrize(('retry', 'delay'), [(0, 2), (2, 8), (9, 300)])
def test_with_jitter_the_delay_is_drawn_between_half_and_all_of_it(monkeypatch, retry, delay):
    asked = []

    def uniform(low, high):
        asked.append((low, high))
        return high

    monkeypatch.setattr(mixins.random, 'uniform', uniform)
    with cqrs_replica_settings(CQRS_RETRY_DELAY=2, retry_backoff=2, retry_backoff_max=300, retry_jitter=True):
        ReplicaItem.get_cqrs_retry_delay(retry)

    assert asked == [(delay / 2, delay)]


def test_with_jitter_every_delay_lies_between_half_and_all_of_it_and_they_differ():
    with cqrs_replica_settings(CQRS_RETRY_DELAY=2, retry_backoff=2, retry_backoff_max=300, retry_jitter=True):
        delays = [ReplicaItem.get_cqrs_retry_delay(3) for _ in range(200)]

    assert all(8 <= d <= 16 for d in delays)
    assert len(set(delays)) > 1


def test_without_jitter_the_delay_is_the_same_every_time():
    with cqrs_replica_settings(retry_jitter=False):
        assert len({ReplicaItem.get_cqrs_retry_delay(2) for _ in range(20)}) == 1


def test_the_test_projects_replicas_retry_quickly():
    # CQRS_RETRY_DELAY 0.2, retry_backoff 2 (default), retry_backoff_max 2, with jitter
    assert all(0.2 <= ReplicaItem.get_cqrs_retry_delay(1) <= 0.4 for _ in range(50))
    assert all(1 <= ReplicaItem.get_cqrs_retry_delay(6) <= 2 for _ in range(50))


def test_a_raw_replica_follows_the_same_policy():
    with cqrs_replica_settings(CQRS_RETRY_DELAY=3, retry_backoff=2, retry_backoff_max=10, retry_jitter=False):
        assert [ManualNoteSink.get_cqrs_retry_delay(n) for n in range(4)] == [3, 6, 10, 10]


# --- should_retry_cqrs -----------------------------------------------------------------------


@pytest.mark.parametrize(('retry', 'expected'), [(0, True), (2, True), (3, False), (4, False)])
def test_a_failure_is_retried_until_cqrs_max_retries_retries_were_made(retry, expected):
    with cqrs_replica_settings(CQRS_MAX_RETRIES=3):
        assert ReplicaItem.should_retry_cqrs(retry, RuntimeError('boom')) is expected
        assert ManualNoteSink.should_retry_cqrs(retry) is expected


def test_with_cqrs_max_retries_zero_nothing_is_retried():
    with cqrs_replica_settings(CQRS_MAX_RETRIES=0):
        assert ReplicaItem.should_retry_cqrs(0) is False


def test_the_default_limit_is_thirty_retries():
    with override_settings(CQRS={'app': settings.CQRS['app']}):
        assert ReplicaItem.should_retry_cqrs(29) is True
        assert ReplicaItem.should_retry_cqrs(30) is False


# --- max_retry_delay -------------------------------------------------------------------------


def test_one_retry_hop_on_rabbitmq_stays_under_half_its_consumer_timeout():
    assert queues.max_retry_delay(celery_app(AMQP_URL)) == queues.MAX_HOP == 900


def test_one_retry_hop_on_the_in_memory_broker_is_at_most_max_hop():
    assert queues.max_retry_delay(celery_app('memory://')) == queues.MAX_HOP


@pytest.mark.parametrize('timeout', ['soon', None, float('nan'), -5, 10 ** 9])
def test_a_redis_visibility_timeout_the_app_gives_wrongly_still_gives_a_usable_hop(timeout):
    app = celery_app(REDIS_URL, broker_transport_options={'visibility_timeout': timeout})

    assert 0 < queues.max_retry_delay(app) <= queues.MAX_HOP


def test_retry_delays_stay_under_half_the_configured_visibility_timeout_on_redis():
    with cqrs_replica_settings(visibility_timeout=120):
        assert queues.max_retry_delay(celery_app(REDIS_URL)) == 60


def test_an_explicit_redis_visibility_timeout_of_the_app_wins_over_the_setting():
    app = celery_app(REDIS_URL, broker_transport_options={'visibility_timeout': 40})

    with cqrs_replica_settings(visibility_timeout=120):
        assert queues.max_retry_delay(app) == 20


def test_max_retry_delay_uses_the_configured_app_by_default():
    redis_app = celery_app(REDIS_URL)

    with override_settings(CQRS={**settings.CQRS, 'app': redis_app,
                                 'replica': {**settings.CQRS['replica'], 'visibility_timeout': 300}}):
        assert queues.max_retry_delay() == 150
    assert queues.max_retry_delay() == queues.MAX_HOP  # the test project's app: memory://


def test_one_retry_hop_on_redis_is_half_the_default_visibility_timeout():
    limit = queues.max_retry_delay(celery_app(REDIS_URL))

    assert limit == get_settings().replica.visibility_timeout / 2 == 30
    assert all(ReplicaItem.get_cqrs_retry_delay(n) <= limit for n in range(40))  # the test project's delays


# --- configure_worker ------------------------------------------------------------------------


def test_configuring_a_redis_worker_sets_the_visibility_timeout_and_keeps_other_options():
    app = celery_app(REDIS_URL, broker_transport_options={'max_connections': 7})

    with cqrs_replica_settings(visibility_timeout=90):
        queues.configure_worker(app)

    assert app.conf.broker_transport_options == {'max_connections': 7, 'visibility_timeout': 90,
                                                 'unacked_restore_interval': 5, 'unacked_restore_throttle': 1}
    assert queues.max_retry_delay(app) == 45


def test_configuring_a_redis_worker_keeps_the_apps_own_visibility_timeout():
    app = celery_app(REDIS_URL, broker_transport_options={'visibility_timeout': 1800})

    with cqrs_replica_settings(visibility_timeout=90):
        queues.configure_worker(app)

    assert app.conf.broker_transport_options['visibility_timeout'] == 1800


def test_configuring_a_redis_worker_does_not_mutate_the_users_options_dict():
    options = {'max_connections': 7}
    app = celery_app(REDIS_URL, broker_transport_options=options)

    queues.configure_worker(app)

    assert options == {'max_connections': 7}


def test_configuring_a_rabbitmq_worker_leaves_the_transport_options_alone():
    app = celery_app(AMQP_URL)

    queues.configure_worker(app)

    assert not app.conf.broker_transport_options


@pytest.mark.parametrize('url', [AMQP_URL, REDIS_URL, 'memory://'])
def test_configuring_a_worker_adds_the_dead_letter_consumer_step(url):
    app = celery_app(url)

    queues.configure_worker(app)

    assert DeadLetterInvalidMessages in app.steps['consumer']


def test_a_service_without_a_replica_queue_is_not_configured():
    app = celery_app(REDIS_URL)

    with override_settings(CQRS={**settings.CQRS, 'queue': None}):
        queues.configure_worker(app)

    assert not app.conf.broker_transport_options
    assert DeadLetterInvalidMessages not in app.steps['consumer']


# --- prefetch_one ----------------------------------------------------------------------------


class _Worker:
    """The two attributes ``prefetch_one`` reads of Celery's ``WorkController``."""

    def __init__(self, app, prefetch_multiplier=4):
        self.app = app
        self.prefetch_multiplier = prefetch_multiplier


def _consuming(app, *names):
    for name in names:
        app.amqp.queues.select_add(name)
    app.amqp.queues.select(names)
    return app


def test_a_worker_of_the_replica_queue_alone_holds_one_message_per_process(caplog):
    worker = _Worker(_consuming(celery_app(AMQP_URL), settings.CQRS['queue']))

    with caplog.at_level('INFO', logger='cqrs_celery.replica.queues'):
        assert queues.prefetch_one(worker)

    assert worker.prefetch_multiplier == 1
    assert 'prefetches one message per pool process' in caplog.text
    assert 'worker_prefetch_multiplier' in caplog.text


def test_a_prefetch_multiplier_set_in_the_celery_configuration_is_kept():
    worker = _Worker(_consuming(celery_app(AMQP_URL, worker_prefetch_multiplier=4), settings.CQRS['queue']))

    assert not queues.prefetch_one(worker)
    assert worker.prefetch_multiplier == 4


def test_a_prefetch_multiplier_given_on_the_command_line_is_kept():
    worker = _Worker(_consuming(celery_app(AMQP_URL), settings.CQRS['queue']), prefetch_multiplier=16)

    assert not queues.prefetch_one(worker)
    assert worker.prefetch_multiplier == 16


def test_a_worker_that_also_consumes_other_queues_keeps_celerys_prefetch():
    worker = _Worker(_consuming(celery_app(AMQP_URL), settings.CQRS['queue'], 'emails'))

    assert not queues.prefetch_one(worker)
    assert worker.prefetch_multiplier == 4
