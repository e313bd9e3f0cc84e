"""django-cqrs bench service: the master or the replica, by ``BENCH_ROLE`` (see ../common.py).

RabbitMQ goes through django-cqrs's own pika transport, Redis through its kombu transport, and
"no broker" through its mock transport (nothing is sent).
"""

from common import *  # noqa: F403
from common import APP, BROKER, DJCQRS_EXCHANGE, QUEUE, ROLE
from shapes import META_FUNCTION

INSTALLED_APPS = ['django.contrib.contenttypes', 'dj_cqrs', APP]
if BROKER.startswith('amqp'):
    TRANSPORT = 'dj_cqrs.transport.RabbitMQTransport'
elif BROKER.startswith('redis'):
    TRANSPORT = 'dj_cqrs.transport.KombuTransport'
else:
    TRANSPORT = 'dj_cqrs.transport.mock.TransportMock'
CQRS = {'transport': TRANSPORT, 'url': BROKER, 'exchange': DJCQRS_EXCHANGE, 'queue': QUEUE}
if ROLE == 'master':
    CQRS['master'] = {'CQRS_AUTO_UPDATE_FIELDS': False, 'CQRS_MESSAGE_TTL': None, 'meta_function': META_FUNCTION}
else:
    CQRS['replica'] = {'CQRS_MAX_RETRIES': 5, 'CQRS_RETRY_DELAY': 1, 'delay_queue_max_size': 1000}
