"""How the master publishes: pooled producers, publisher confirms, bounded timeouts (no broker needed)."""

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings

from cqrs_celery.producer import producer_pool


def pool_connection(url: str, **master):
    app = Celery('producer-test', broker=url, set_as_current=False)
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'master': {**settings.CQRS['master'], **master}}):
        return producer_pool(app).connections.connection  # the connection the pool was created for


def test_publishing_on_rabbitmq_waits_for_publisher_confirms():
    connection = pool_connection('amqp://guest:guest@127.0.0.1:5672//')
    assert connection.transport_options['confirm_publish'] is True


@pytest.mark.parametrize('url', ['redis://127.0.0.1:6379/0', 'memory://'])
def test_other_brokers_have_no_confirms_to_wait_for(url):
    assert 'confirm_publish' not in pool_connection(url).transport_options


def test_connecting_is_bounded_by_the_publish_timeout():
    # (kombu keeps one pool per broker URL: a URL of its own, so an earlier pool is not reused)
    connection = pool_connection('amqp://guest:guest@127.0.0.1:5672/bounded', publish_timeout=0.75)
    assert connection.connect_timeout == 0.75
    assert connection.transport_options['max_retries'] == 1


def test_every_publish_of_one_app_shares_one_producer_pool():
    app = Celery('producer-test', broker='amqp://guest:guest@127.0.0.1:5672//', set_as_current=False)
    with override_settings(CQRS={**settings.CQRS, 'app': app}):
        assert producer_pool(app) is producer_pool(app)
