"""Django admin: resync selected master rows, and read-only views of the outbox and the tombstones."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db import router
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy

from cqrs_celery.constants import SignalType
from cqrs_celery.models import MasterTombstone, OutboxEvent, ReplicaTombstone

#: What a queue name may look like (RabbitMQ allows up to 255 bytes).
_QUEUE_NAME = re.compile(r'^[\w.:@/-]{1,255}$')


class CQRSAdminMasterSyncMixin:
    """Mixin for a master model's ``ModelAdmin``: actions that send the selected rows to the replicas.

    ``sync_items`` sends each selected row's current state as a SYNC to every replica (django-cqrs's
    action); ``sync_items_to_queue`` asks for one replica queue first (listing ``cqrs_sync_queues``)
    and sends to that queue only, optionally forced. Override ``_cqrs_sync_queryset`` to adjust the
    rows (e.g. ``select_related``), ``get_cqrs_sync_queues`` to list the queues another way.
    """

    #: Replica queues offered by "sync to one queue" (any other name can be typed in).
    cqrs_sync_queues: tuple[str, ...] | list[str] = ()
    actions: Any

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        found: dict[str, Any] = super().get_actions(request)  # type: ignore[misc]
        if (self.actions is None or IS_POPUP_VAR in request.GET
                or not self.has_change_permission(request)):  # type: ignore[attr-defined]
            return found
        for name in ('sync_items', 'sync_items_to_queue'):
            if name not in found:
                found[name] = self.get_action(name)  # type: ignore[attr-defined]
        return found

    def _cqrs_sync_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """The rows to send (override to adjust the queryset)."""
        return queryset

    def get_cqrs_sync_queues(self, request: HttpRequest) -> list[str]:
        """The replica queues offered by ``sync_items_to_queue``."""
        return list(self.cqrs_sync_queues)

    @admin.action(description=gettext_lazy('Synchronize selected %(verbose_name_plural)s via CQRS'))
    def sync_items(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._send(request, queryset, None, force=False)

    @admin.action(description=gettext_lazy('Synchronize selected %(verbose_name_plural)s to one replica queue'))
    def sync_items_to_queue(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
        error = None
        if request.POST.get('cqrs_confirm'):
            queue = (request.POST.get('cqrs_queue') or request.POST.get('cqrs_queue_choice') or '').strip()
            if _QUEUE_NAME.match(queue):
                self._send(request, queryset, queue, force=bool(request.POST.get('cqrs_force')))
                return None
            error = gettext_lazy('Choose a queue or type its name (letters, digits and ._-:@/ only).')
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            'title': gettext_lazy('Synchronize to one replica queue'),
            'opts': opts, 'objects': list(queryset), 'count': queryset.count(), 'name': opts.verbose_name_plural,
            'queues': self.get_cqrs_sync_queues(request), 'error': error,
            'select_across': request.POST.get('select_across', '0'),
        }
        return TemplateResponse(request, 'admin/cqrs_celery/sync_to_queue.html', context)

    def _send(self, request: HttpRequest, queryset: QuerySet[Any], queue: str | None, force: bool) -> None:
        failed = []
        sent = 0
        for item in self._cqrs_sync_queryset(queryset):
            try:
                done = _forced_sync(item, queue) if force and queue else item.cqrs_sync(queue=queue)
            except Exception as exc:
                failed.append(f'{item.pk}: {exc}')
                continue
            if done:
                sent += 1
            else:
                failed.append(str(item.pk))
        target = f'queue {queue}' if queue else 'every replica'
        self.message_user(request, f'{sent} successfully synced to {target}.',  # type: ignore[attr-defined]
                          messages.SUCCESS)
        if failed:
            self.message_user(request, f'{len(failed)} failed: {", ".join(failed[:50])}',  # type: ignore[attr-defined]
                              messages.WARNING)


def _forced_sync(item: Any, queue: str) -> bool:
    """``cqrs_sync`` to ``queue`` that applies even where that replica holds a higher revision."""
    from cqrs_celery.master.publish import build_envelope
    from cqrs_celery.producer import send

    using = router.db_for_read(type(item), instance=item)
    fresh = type(item).relate_cqrs_serialization(type(item)._base_manager.using(using)).filter(pk=item.pk).first()
    if fresh is None or not fresh.is_sync_instance():
        return False
    send(build_envelope(fresh, SignalType.SYNC, using, queue=queue, forced=True))
    return True


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows the library keeps: shown, never edited here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OutboxStateFilter(admin.SimpleListFilter):
    title = gettext_lazy('state')
    parameter_name = 'state'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [('pending', gettext_lazy('pending')), ('set_aside', gettext_lazy('set aside'))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ('pending', 'set_aside'):
            return queryset.filter(set_aside=self.value() == 'set_aside')
        return queryset


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    """Events waiting to be published, and those set aside after too many failed publishes."""

    list_display = ('id', 'cqrs_id', 'pk_value', 'signal_type', 'revision', 'created', 'attempts', 'available_at',
                    'set_aside', 'error')
    list_filter = (OutboxStateFilter, 'cqrs_id', 'signal_type')
    search_fields = ('cqrs_id', 'pk_value')
    ordering = ('created', 'id')
    actions = ['retry_set_aside']

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm('cqrs_celery.change_outboxevent'))

    @admin.action(description=gettext_lazy('Publish the selected set-aside events again'),
                  permissions=['retry'])
    def retry_set_aside(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        from cqrs_celery.master import outbox, publisher

        using = queryset.db
        ids = list(queryset.filter(set_aside=True).values_list('id', flat=True))
        put_back = outbox.retry_set_aside(using, ids)
        publisher.committed(using, ids)
        self.message_user(request, f'{put_back} set-aside events put back in line to be published.',
                          messages.SUCCESS)


@admin.register(MasterTombstone)
class MasterTombstoneAdmin(ReadOnlyAdmin):
    """Last revisions of deleted master rows (a row re-created with the same pk continues from it)."""

    list_display = ('cqrs_id', 'pk_value', 'revision', 'deleted_at')
    list_filter = ('cqrs_id',)
    search_fields = ('pk_value',)
    ordering = ('-deleted_at',)


@admin.register(ReplicaTombstone)
class ReplicaTombstoneAdmin(MasterTombstoneAdmin):
    """Revisions at which replica rows were deleted (a late SAVE cannot bring them back)."""


def _register_reconciliation_runs() -> None:
    """Reconciliation runs, read-only."""
    from cqrs_celery.models import ReconciliationRun
    from cqrs_celery.reconcile.admin import ReconciliationRunAdmin

    if not admin.site.is_registered(ReconciliationRun):
        admin.site.register(ReconciliationRun, ReconciliationRunAdmin)


_register_reconciliation_runs()
