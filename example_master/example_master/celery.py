"""The master service's Celery app: publishes replication events and runs the outbox relay.

    celery -A example_master worker -Q example_master -c 2   # runs the periodic tasks
    celery -A example_master beat                            # schedules them
"""

import os

from celery import Celery

from cqrs_celery.beat import beat_schedule

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'example_master.settings')

app = Celery('example_master')
app.config_from_object('django.conf:settings', namespace='CELERY')
app.autodiscover_tasks()

# The outbox relay publishes events a web process committed but could not publish (broker down,
# process killed right after commit); the clean-up forgets old tombstones of deleted rows.
app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}
