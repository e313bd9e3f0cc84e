"""The replica service's Celery app; its worker applies what the master publishes.

    celery -A example_replica worker -Q my_replica -c 2

The worker declares the queue (``CQRS['queue']``, which must be the one given to ``-Q``) and binds
it to the exchange of every model this service replicates when it starts: nothing else to set up.
"""

import os

from celery import Celery

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'example_replica.settings')

app = Celery('example_replica')
app.config_from_object('django.conf:settings', namespace='CELERY')
app.autodiscover_tasks()
