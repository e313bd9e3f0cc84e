"""The library this service owns. Every committed save or delete is published to the replicas.

Each model is a ``MasterMixin`` with a ``CQRS_ID`` that replica services name to receive it.
"""

from typing import Any

from django.db import models

from cqrs_celery.mixins import MasterMixin


class Author(MasterMixin):
    """Replicated whole as ``author``; renames travel with the old name (``previous_data``)."""

    CQRS_ID = 'author'
    CQRS_TRACKED_FIELDS = ['name']

    name = models.CharField(max_length=200)
    country = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ['id']

    def __str__(self) -> str:
        return self.name


class Book(MasterMixin):
    """Replicated as ``book``, without the internal notes; old title and price travel with changes."""

    CQRS_ID = 'book'
    CQRS_FIELDS = ['id', 'title', 'author', 'price', 'published']
    CQRS_TRACKED_FIELDS = ['title', 'price']

    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name='books')
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published = models.DateField(null=True, blank=True)
    notes = models.TextField(blank=True, help_text='Internal; not sent to replicas (CQRS_FIELDS).')

    class Meta:
        ordering = ['id']

    def __str__(self) -> str:
        return self.title


class Stock(MasterMixin):
    """Copies on the shelf, replicated as ``stock`` with the book's title added to the data."""

    CQRS_ID = 'stock'
    CQRS_TRACKED_FIELDS = ['quantity']

    book = models.OneToOneField(Book, on_delete=models.CASCADE, related_name='stock')
    quantity = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ['id']
        verbose_name_plural = 'stock'

    def __str__(self) -> str:
        return f'{self.quantity} × {self.book_title()}'

    def book_title(self) -> str:
        try:
            return self.book.title
        except Book.DoesNotExist:
            return f'book #{self.book_id}'

    def to_cqrs_dict(self, using: str | None = None, sync: bool = False) -> dict[str, Any]:
        # Replicas that keep no copy of the books can still say which book this is.
        return {**super().to_cqrs_dict(using=using, sync=sync), 'book_title': self.book_title()}

    def get_custom_cqrs_delete_data(self) -> dict[str, Any]:
        return {'book_title': self.book_title()}

    @classmethod
    def relate_cqrs_serialization(cls, queryset: models.QuerySet) -> models.QuerySet:
        return queryset.select_related('book')
