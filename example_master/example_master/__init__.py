"""The example master service: owns the library's authors, books and stock."""

# Load the Celery app with Django, so that ``shared_task`` tasks (cqrs_celery's relay) bind to it.
from example_master.celery import app as celery_app

__all__ = ['celery_app']
