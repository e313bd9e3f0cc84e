"""Read-only admin of reconciliation runs (registered by the app's admin module)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from cqrs_celery.models import ReconciliationRun


class ReconciliationRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The runs each side recorded: drift by kind, repairs and traffic; nothing can be changed."""

    list_display = ('cqrs_id', 'queue', 'side', 'started_at', 'finished_at', 'missing', 'stale', 'ahead',
                    'changed', 'extra', 'repaired', 'held_back', 'messages', 'bytes', 'dry_run')
    list_filter = ('side', 'cqrs_id', 'queue', 'content', 'dry_run')
    search_fields = ('cqrs_id', 'queue', 'run_id')
    date_hierarchy = 'started_at'
    ordering = ('-started_at',)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in ReconciliationRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
