"""Settings of the example replica service. Run it twice with other values for a second service:

    REPLICA_QUEUE=analytics_replica celery -A example_replica worker -Q analytics_replica -c 2

Environment:
    REPLICA_QUEUE       this service's queue, unique per replica service (default: my_replica);
                        give the same name to ``celery worker -Q``
    DATABASE_URL        sqlite:////abs/path.sqlite3 or postgres://user:password@host:5432/name
                        (default: SQLite file named after the queue, in EXAMPLE_DATA_DIR)
    CELERY_BROKER_URL   amqp://…, redis://… or filesystem:// (default: kombu's filesystem broker,
                        folders under EXAMPLE_DATA_DIR/broker, shared with the example master)
    EXAMPLE_DATA_DIR    where the SQLite file, the broker folders and the stock log live
                        (default: <repo>/.demo)
    STOCK_LOG_FILE      where the stock watcher writes its lines (default: stock_<queue>.log
                        in EXAMPLE_DATA_DIR)
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get('EXAMPLE_DATA_DIR') or BASE_DIR.parent / '.demo').resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get('DJANGO_SECRET_KEY', 'example-replica-insecure-key-change-me')
DEBUG = os.environ.get('DJANGO_DEBUG', '1') == '1'
ALLOWED_HOSTS: list[str] = []

REPLICA_QUEUE = os.environ.get('REPLICA_QUEUE', 'my_replica')

INSTALLED_APPS = [
    'django.contrib.contenttypes',
    'cqrs_celery',
    'catalog',
]


def database_from_url(url: str) -> dict:
    """A ``DATABASES`` entry from ``sqlite:///path`` or ``postgres://user:password@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme == 'sqlite':
        options = {'timeout': 20}
        if django.VERSION >= (5, 1):
            # Two worker processes write at once: IMMEDIATE makes them queue up instead of failing
            # with "database is locked"; WAL lets readers (the demo's table) go on meanwhile.
            options.update(transaction_mode='IMMEDIATE', init_command='PRAGMA journal_mode=WAL;')
        return {'ENGINE': 'django.db.backends.sqlite3', 'NAME': parts.path[1:], 'OPTIONS': options}
    if parts.scheme in {'postgres', 'postgresql'}:
        return {
            'ENGINE': 'django.db.backends.postgresql', 'NAME': parts.path.lstrip('/'),
            'USER': unquote(parts.username or ''), 'PASSWORD': unquote(parts.password or ''),
            'HOST': parts.hostname or '', 'PORT': parts.port or '',
        }
    raise ValueError(f'DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite:// or postgres://)')


DATABASES = {'default': database_from_url(
    os.environ.get('DATABASE_URL') or f'sqlite:///{DATA_DIR / f"{REPLICA_QUEUE}.sqlite3"}')}
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
USE_TZ = True
TIME_ZONE = 'UTC'

# --- Celery: the same broker as the master ----------------------------------------------------
CELERY_BROKER_URL = os.environ.get('CELERY_BROKER_URL', 'filesystem://')
if CELERY_BROKER_URL.startswith('filesystem:'):
    # kombu's filesystem transport with atomic message files (cqrs_celery/filesystem.py)
    CELERY_BROKER_TRANSPORT = 'cqrs_celery.filesystem:Transport'
    # Must be the master's folders: one folder of message files (in == out) and the bindings.
    _broker_dir = DATA_DIR / 'broker'
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        'data_folder_in': str(_broker_dir / 'messages'),
        'data_folder_out': str(_broker_dir / 'messages'),
        'control_folder': str(_broker_dir / 'control'),
        'polling_interval': 0.2,  # seconds between looks into the folder when it is empty
    }
    # kombu fails on missing folders; any celery command (beat, purge, inspect) may come first.
    for _folder in ('messages', 'control'):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_IGNORE_RESULT = True

# --- cqrs_celery ------------------------------------------------------------------------------
CQRS = {
    'app': 'example_replica.celery.app',
    'queue': REPLICA_QUEUE,
    'replica': {'CQRS_RETRY_DELAY': 1, 'CQRS_MAX_RETRIES': 10},
}
STOCK_LOG_FILE = os.environ.get('STOCK_LOG_FILE') or str(DATA_DIR / f'stock_{REPLICA_QUEUE}.log')

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'loggers': {
        'cqrs_celery': {'handlers': ['console'], 'level': 'INFO'},
        'catalog': {'handlers': ['console'], 'level': 'INFO'},
    },
}
