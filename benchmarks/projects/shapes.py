"""The field values of bench row ``i``, the same for both libraries and for the plain model."""

import datetime
import decimal

EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NOTES = 'A line of text that a replicated row might carry along with its other fields. ' * 3


def row(i: int) -> dict:
    return {
        'sku': f'SKU-{i:08d}',
        'title': f'Bench item number {i}',
        'quantity': i % 1000,
        'price': decimal.Decimal(i % 10000) / 100,
        'happened_at': EPOCH + datetime.timedelta(seconds=i),
        'active': i % 2 == 0,
        'notes': NOTES,
    }


def item_fields():
    """An abstract model with the bench row's fields (imported from the apps' models modules)."""
    from django.db import models

    class ItemFields(models.Model):
        sku = models.CharField(max_length=40)
        title = models.CharField(max_length=200)
        quantity = models.IntegerField()
        price = models.DecimalField(max_digits=12, decimal_places=2)
        happened_at = models.DateTimeField()
        active = models.BooleanField(default=True)
        notes = models.TextField(blank=True)

        class Meta:
            abstract = True

    return ItemFields
