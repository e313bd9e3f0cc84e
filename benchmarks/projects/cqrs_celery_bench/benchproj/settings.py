"""cqrs_celery bench service: the master or the replica, by ``BENCH_ROLE`` (see ../common.py)."""

from common import *  # noqa: F403
from common import APP, BROKER, OUTBOX, PUBLISHER, QUEUE, ROLE
from shapes import META_FUNCTION

INSTALLED_APPS = ['django.contrib.contenttypes', 'cqrs_celery', APP]
CELERY_BROKER_URL = 'memory://' if BROKER == 'none' else BROKER
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False  # no pidbox queues left behind on the broker
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CQRS = {'app': 'benchproj.celery.app', 'master': {'outbox': OUTBOX}}
if PUBLISHER:
    CQRS['master']['publisher'] = PUBLISHER
if META_FUNCTION:
    CQRS['master']['meta_function'] = META_FUNCTION
if ROLE == 'replica':
    CQRS.update(queue=QUEUE, replica={'CQRS_MAX_RETRIES': 5, 'CQRS_RETRY_DELAY': 1})
