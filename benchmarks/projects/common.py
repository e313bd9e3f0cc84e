"""Settings shared by the two bench projects; every value comes from the environment run.py sets.

Environment:
    BENCH_ROLE      master | replica: which app (and so which models) this process loads
    BENCH_DB        sqlite:////abs/path.sqlite3 or postgres:///name (user postgres on 127.0.0.1)
    BENCH_BROKER    amqp://…, redis://…, or none (no broker: the library's own stand-in)
    BENCH_QUEUE     the replica service's queue name
    BENCH_OUTBOX    1 | 0 (cqrs_celery master only)
    BENCH_PUBLISHER cqrs_celery's CQRS['master']['publisher'] when set (thread | inline | relay)
"""

import os
from urllib.parse import urlsplit

ROLE = os.environ.get('BENCH_ROLE', 'master')
BROKER = os.environ.get('BENCH_BROKER', 'none')
QUEUE = os.environ.get('BENCH_QUEUE', 'bench_replica')
OUTBOX = os.environ.get('BENCH_OUTBOX', '1') == '1'
PUBLISHER = os.environ.get('BENCH_PUBLISHER', '')

#: The bench models' CQRS_ID and django-cqrs's exchange: names no other user of the broker has.
CQRS_ID = 'bench_item'
DJCQRS_EXCHANGE = 'bench_djcqrs'


def database(url: str) -> dict:
    """A ``DATABASES`` entry from ``BENCH_DB``."""
    parts = urlsplit(url)
    if parts.scheme == 'sqlite':
        # Two worker processes write at once: IMMEDIATE makes them queue up instead of failing
        # with "database is locked"; WAL lets the benchmark's polling read meanwhile.
        return {'ENGINE': 'django.db.backends.sqlite3', 'NAME': parts.path[1:],
                'OPTIONS': {'timeout': 30, 'transaction_mode': 'IMMEDIATE',
                            'init_command': 'PRAGMA journal_mode=WAL;'}}
    return {'ENGINE': 'django.db.backends.postgresql', 'NAME': parts.path.lstrip('/'), 'USER': 'postgres',
            'HOST': '127.0.0.1', 'PORT': 5432, 'CONN_MAX_AGE': None}


SECRET_KEY = 'bench-only'
DEBUG = False
USE_TZ = True
TIME_ZONE = 'UTC'
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
DATABASES = {'default': database(os.environ.get('BENCH_DB', 'sqlite:////tmp/bench.sqlite3'))}
APP = 'bench_master' if ROLE == 'master' else 'bench_replica'
LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'root': {'handlers': ['console'], 'level': 'WARNING'},
}
