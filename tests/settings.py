"""Settings of the test project: one settings module for the pytest process (master and reader of
the replica databases) and for the replica worker processes the broker tests start.

Environment:
    CQRS_TEST_DATABASE   postgres | sqlite (default: postgres when 127.0.0.1:5432 answers)
    CQRS_TEST_DEFAULT_DB name of the 'default' PostgreSQL database (replica workers use their own)
    CQRS_TEST_DB_PREFIX  prefix of the test database names (default cqrs_test_)
    CQRS_TEST_QUEUE      this process's replica queue
    CQRS_TEST_BROKER     broker URL of the Celery app (default: in-memory)
"""

import os
import socket


def _postgres_up() -> bool:
    try:
        with socket.create_connection(('127.0.0.1', 5432), timeout=0.5):
            return True
    except OSError:
        return False


SECRET_KEY = 'cqrs-celery-tests'
DEBUG = False
USE_TZ = True
TIME_ZONE = 'UTC'
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'

INSTALLED_APPS = [
    'django.contrib.contenttypes',
    'django.contrib.auth',
    'cqrs_celery',
    'tests.master_app',
    'tests.replica_app',
]

DATABASE_KIND = os.environ.get('CQRS_TEST_DATABASE') or ('postgres' if _postgres_up() else 'sqlite')


# Replica workers keep their database connection between tasks (as a production replica should).
CONN_MAX_AGE = int(os.environ.get('CQRS_TEST_CONN_MAX_AGE', '0'))


def _database(name: str) -> dict:
    if DATABASE_KIND == 'postgres':
        return {
            # Django's PostgreSQL backend, with a faster flush between tests (tests/pg_backend/base.py)
            'ENGINE': 'tests.pg_backend', 'NAME': name, 'USER': 'postgres',
            'HOST': '127.0.0.1', 'PORT': 5432, 'TEST': {'NAME': name}, 'CONN_MAX_AGE': CONN_MAX_AGE,
        }
    path = f'/tmp/{name}.sqlite3'
    return {'ENGINE': 'django.db.backends.sqlite3', 'NAME': path, 'TEST': {'NAME': path}}


# CQRS_TEST_DB_PREFIX lets two test runs share one PostgreSQL server without colliding.
_PREFIX = os.environ.get('CQRS_TEST_DB_PREFIX', 'cqrs_test_')
DATABASES = {
    'default': _database(os.environ.get('CQRS_TEST_DEFAULT_DB', f'{_PREFIX}master')),
    'replica_a': _database(f'{_PREFIX}replica_a'),
    'replica_b': _database(f'{_PREFIX}replica_b'),
}
if DATABASE_KIND == 'sqlite' and 'CQRS_TEST_DEFAULT_DB' not in os.environ:
    DATABASES['default'] = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}

CELERY_BROKER_URL = os.environ.get('CQRS_TEST_BROKER', 'memory://')


def filesystem_broker_options(folder: str) -> dict:
    """kombu filesystem transport options: every service shares one message folder."""
    return {'data_folder_in': f'{folder}/messages', 'data_folder_out': f'{folder}/messages',
            'control_folder': f'{folder}/control', 'polling_interval': 0.1}


#: kombu's filesystem transport with atomic message files.
FILESYSTEM_TRANSPORT = 'cqrs_celery.filesystem:Transport'

if CELERY_BROKER_URL.startswith('filesystem'):
    CELERY_BROKER_TRANSPORT = FILESYSTEM_TRANSPORT
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(os.environ['CQRS_TEST_FS_DIR'])
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

CQRS = {
    'app': 'tests.celery_app.app',
    'queue': os.environ.get('CQRS_TEST_QUEUE', 'replica_a') or None,
    'master': {
        'meta_function': 'tests.master_app.meta.meta_function',
        'publish_timeout': 1.0,
        'outbox_relay_delay': 1.0,
        'publisher': os.environ.get('CQRS_TEST_PUBLISHER', 'thread'),
        # The master worker of the bootstrap / scale-out broker tests takes first-run sync requests.
        **({'bootstrap_queue': os.environ['CQRS_TEST_BOOTSTRAP_QUEUE']}
           if os.environ.get('CQRS_TEST_BOOTSTRAP_QUEUE') else {}),
    },
    'replica': {
        'CQRS_RETRY_DELAY': 0.2,
        'CQRS_MAX_RETRIES': 5,
        'retry_backoff_max': 2,
        **({'visibility_timeout': int(os.environ['CQRS_TEST_VISIBILITY_TIMEOUT'])}
           if os.environ.get('CQRS_TEST_VISIBILITY_TIMEOUT') else {}),
        **({'queue_type': os.environ['CQRS_TEST_QUEUE_TYPE']} if os.environ.get('CQRS_TEST_QUEUE_TYPE') else {}),
    },
}

# The master's worker and beat (broker tests): the relay runs every second on the master's queue.
from cqrs_celery.beat import beat_schedule  # noqa: E402

CELERY_BEAT_SCHEDULE = beat_schedule(relay_every=1.0, queue=os.environ.get('CQRS_TEST_MASTER_QUEUE') or None)

# Reconciliation (broker tests): a replica service's beat starts it every few seconds, and sends
# its requests to the master's queue; the master allows a run per second.
CQRS['master']['reconcile_min_interval'] = 1.0
CQRS['master']['reconcile_grace'] = float(os.environ.get('CQRS_TEST_RECONCILE_GRACE', '2'))
CQRS['replica']['reconcile_master_queue'] = os.environ.get('CQRS_TEST_RECONCILE_MASTER_QUEUE') or None
if os.environ.get('CQRS_TEST_RECONCILE_EVERY'):
    CELERY_BEAT_SCHEDULE = beat_schedule(relay=False, cleanup=False, reconcile_queue=CQRS['queue'],
                                         reconcile_every=float(os.environ['CQRS_TEST_RECONCILE_EVERY']),
                                         content_every=float(os.environ['CQRS_TEST_RECONCILE_CONTENT_EVERY']))
#: Where the fault-injecting replica model keeps its attempt counters (broker tests).
CQRS_TEST_FAULT_DIR = os.environ.get('CQRS_TEST_FAULT_DIR', '')

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'loggers': {'cqrs_celery': {'handlers': ['console'], 'level': os.environ.get('CQRS_TEST_LOGLEVEL', 'INFO')}},
}

# Django admin (tests/test_admin.py): cqrs_celery's admin views and the resync actions.
INSTALLED_APPS += [
    'django.contrib.admin',
    'django.contrib.sessions',
    'django.contrib.messages',
]
MIDDLEWARE = [
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
]
ROOT_URLCONF = 'tests.urls'
TEMPLATES = [{
    'BACKEND': 'django.template.backends.django.DjangoTemplates',
    'APP_DIRS': True,
    'OPTIONS': {'context_processors': [
        'django.template.context_processors.request',
        'django.contrib.auth.context_processors.auth',
        'django.contrib.messages.context_processors.messages',
    ]},
}]
