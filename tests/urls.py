"""URLs of the test project: Django admin only (tests/test_admin.py)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path('admin/', admin.site.urls)]
