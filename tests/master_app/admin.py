"""Admin of the test master app: the resync actions on a model with an ``id`` pk and one without."""

from django.contrib import admin

from cqrs_celery.admin import CQRSAdminMasterSyncMixin
from tests.master_app.models import Author, Item


@admin.register(Author)
class AuthorAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    cqrs_sync_queues = ('replica_a', 'replica_b')


@admin.register(Item)
class ItemAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    pass
