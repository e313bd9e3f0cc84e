"""Edit the library in Django admin; every save and delete made here reaches the replicas."""

from django.contrib import admin

from cqrs_celery.admin import CQRSAdminMasterSyncMixin
from library.models import Author, Book, Stock

REPLICATION_FIELDS = ('cqrs_revision', 'cqrs_updated')


class ReplicatedAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    """Actions: send the selected rows again to every replica, or to one replica service's queue."""

    cqrs_sync_queues = ('my_replica', 'analytics_replica')  # the replica services of docker-compose.yml
    readonly_fields = REPLICATION_FIELDS


class StockInline(admin.StackedInline):
    model = Stock
    fields = ('quantity', *REPLICATION_FIELDS)
    readonly_fields = REPLICATION_FIELDS


@admin.register(Author)
class AuthorAdmin(ReplicatedAdmin):
    list_display = ('name', 'country', *REPLICATION_FIELDS)
    search_fields = ('name',)


@admin.register(Book)
class BookAdmin(ReplicatedAdmin):
    list_display = ('title', 'author', 'price', 'published', *REPLICATION_FIELDS)
    list_filter = ('author',)
    search_fields = ('title',)
    inlines = [StockInline]


@admin.register(Stock)
class StockAdmin(ReplicatedAdmin):
    list_display = ('book', 'quantity', *REPLICATION_FIELDS)
