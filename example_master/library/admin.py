"""Edit the library in Django admin; every save and delete made here reaches the replicas."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from library.models import Author, Book, Stock

REPLICATION_FIELDS = ('cqrs_revision', 'cqrs_updated')


@admin.action(description='Send the selected rows to every replica again (SYNC)')
def resync(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    sent = sum(1 for obj in queryset if obj.cqrs_sync())
    modeladmin.message_user(request, f'{sent} rows sent to the replicas.', messages.SUCCESS)


class ReplicatedAdmin(admin.ModelAdmin):
    actions = [resync]
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
