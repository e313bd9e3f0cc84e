"""The example project's settings, as written for django-cqrs."""

import os

SECRET_KEY = 'example-not-secret'
USE_TZ = True
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'

INSTALLED_APPS = [
    'django.contrib.contenttypes',
    'dj_cqrs',
    'djcqrs_project.shop',
    'djcqrs_project.shop_replica',
]

if os.environ.get('EXAMPLE_DB'):
    DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': os.environ['EXAMPLE_DB'],
                             'USER': 'postgres', 'HOST': '127.0.0.1', 'PORT': 5432}}
else:
    DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}

# --- django-cqrs (the migration guide translates this block) ---
CQRS = {
    'transport': 'dj_cqrs.transport.RabbitMQTransport',
    'url': os.environ.get('EXAMPLE_BROKER', 'amqp://guest:guest@127.0.0.1:5672/'),
    'queue': os.environ.get('EXAMPLE_QUEUE', 'shop_replica'),
    'master': {
        'CQRS_AUTO_UPDATE_FIELDS': False,
        'CQRS_MESSAGE_TTL': 86400,
        'meta_function': 'djcqrs_project.shop.meta.shop_meta',
    },
    'replica': {
        'CQRS_MAX_RETRIES': None,
        'CQRS_RETRY_DELAY': 1,
        'delay_queue_max_size': 1000,
        'dead_letter_queue': 'dead_letter_shop_replica',
        'dead_message_ttl': 864000,
    },
}
# --- end of django-cqrs ---
