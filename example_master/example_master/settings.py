"""Settings of the example master service; everything that differs between machines comes from the
environment, with defaults that run on a laptop with nothing installed.

Environment:
    DATABASE_URL        sqlite:////abs/path.sqlite3 or postgres://user:password@host:5432/name
                        (default: SQLite in EXAMPLE_DATA_DIR)
    CELERY_BROKER_URL   amqp://…, redis://… or filesystem:// (default: kombu's filesystem broker,
                        folders under EXAMPLE_DATA_DIR/broker, shared with the example replica)
    EXAMPLE_DATA_DIR    where the SQLite file and the filesystem broker live (default: <repo>/.demo)
    LIBRARY_TENANT      sent with every change as metadata (default: demo)
    DJANGO_SECRET_KEY, DJANGO_DEBUG (1/0), DJANGO_ALLOWED_HOSTS (comma-separated)
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get('EXAMPLE_DATA_DIR') or BASE_DIR.parent / '.demo').resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get('DJANGO_SECRET_KEY', 'example-master-insecure-key-change-me')
DEBUG = os.environ.get('DJANGO_DEBUG', '1') == '1'
ALLOWED_HOSTS = os.environ.get('DJANGO_ALLOWED_HOSTS', 'localhost,127.0.0.1,[::1]').split(',')

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'cqrs_celery',
    'library',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
    # After authentication: records who changes rows, for the replicas' metadata.
    'library.middleware.ChangedByMiddleware',
]

ROOT_URLCONF = 'example_master.urls'
WSGI_APPLICATION = 'example_master.wsgi.application'
TEMPLATES = [{
    'BACKEND': 'django.template.backends.django.DjangoTemplates',
    'DIRS': [],
    'APP_DIRS': True,
    'OPTIONS': {'context_processors': [
        'django.template.context_processors.request',
        'django.contrib.auth.context_processors.auth',
        'django.contrib.messages.context_processors.messages',
    ]},
}]


def database_from_url(url: str) -> dict:
    """A ``DATABASES`` entry from ``sqlite:///path`` or ``postgres://user:password@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme == 'sqlite':
        options = {'timeout': 20}
        if django.VERSION >= (5, 1):
            # Several processes write (web, workers): WAL lets readers go on, IMMEDIATE makes
            # writers queue up instead of failing with "database is locked".
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
    os.environ.get('DATABASE_URL') or f'sqlite:///{DATA_DIR / "master.sqlite3"}')}
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'

LANGUAGE_CODE = 'en-us'
TIME_ZONE = 'UTC'
USE_TZ = True
STATIC_URL = 'static/'
STATIC_ROOT = DATA_DIR / 'static'

# --- Celery: the broker every service of the example shares -----------------------------------
CELERY_BROKER_URL = os.environ.get('CELERY_BROKER_URL', 'filesystem://')
if CELERY_BROKER_URL.startswith('filesystem:'):
    # kombu's filesystem transport with atomic message files (cqrs_celery/filesystem.py)
    CELERY_BROKER_TRANSPORT = 'cqrs_celery.filesystem:Transport'
    # kombu's filesystem broker: one folder of message files that every service reads and writes
    # (so data_folder_in == data_folder_out) and one folder for the exchange bindings.
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
# The master's own tasks (outbox relay, clean-up) have a queue of their own, apart from replicas'.
CELERY_TASK_DEFAULT_QUEUE = 'example_master'
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / 'celerybeat-schedule')

# --- cqrs_celery ------------------------------------------------------------------------------
CQRS = {
    'app': 'example_master.celery.app',
    'master': {
        # who changed a row, for which tenant: travels with every event as ``meta``
        'meta_function': 'library.cqrs.change_meta',
    },
}
LIBRARY_TENANT = os.environ.get('LIBRARY_TENANT', 'demo')

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'loggers': {'cqrs_celery': {'handlers': ['console'], 'level': 'INFO'}},
}
