"""The example replica service: keeps read-only copies of the master's library."""

# Load the Celery app with Django, so that cqrs_celery's ``shared_task`` tasks bind to it.
from example_replica.celery import app as celery_app

__all__ = ['celery_app']
