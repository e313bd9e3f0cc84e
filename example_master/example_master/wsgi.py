"""WSGI entry point of the example master service (``gunicorn example_master.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'example_master.settings')

application = get_wsgi_application()
