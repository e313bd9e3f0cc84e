"""The bench row: its fields and the values of row ``i``, the same for both libraries and the plain model.

Environment (run.py's ``--shape``, ``--tracked`` and ``--meta`` set it):
    BENCH_SHAPE     item (the default: eight columns, the id included), narrow (four) or wide (nineteen, a JSON
                    document and a 2 KB text among them; no TimeField, which django-cqrs
                    cannot send)
    BENCH_TRACKED   1: the master model names ``CQRS_TRACKED_FIELDS`` (quantity and sku), so
                    every event carries ``previous_data``
    BENCH_META      1: the master names ``meta_function`` (:func:`bench_meta`), so every event carries
                    metadata; cqrs_celery then writes its outbox events from Python, not by trigger

Every shape has ``sku`` and ``quantity``: scenario B changes ``quantity``.
"""

import datetime
import decimal
import os
import uuid

SHAPE = os.environ.get('BENCH_SHAPE', 'item')
SHAPES = ('item', 'narrow', 'wide')
if SHAPE not in SHAPES:
    raise ValueError(f'BENCH_SHAPE must be one of {", ".join(SHAPES)}, not {SHAPE!r}')

#: The master model's ``CQRS_TRACKED_FIELDS`` (None: no tracked fields).
TRACKED_FIELDS = ['quantity', 'sku'] if os.environ.get('BENCH_TRACKED') == '1' else None
#: The master's ``meta_function`` (None: no metadata); both libraries take the same dotted path.
META_FUNCTION = 'shapes.bench_meta' if os.environ.get('BENCH_META') == '1' else None

EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NOTES = 'A line of text that a replicated row might carry along with its other fields. ' * 3
BODY = ''.join(f'Paragraph {n}: a longer text column, as an article or a description would be. ' for n in range(26))


def bench_meta(obj, **kwargs) -> dict:
    """Metadata of every event with ``BENCH_META=1``: small, and from the instance, as a real one would be."""
    return {'source': 'bench', 'sku': obj.sku}


def row(i: int) -> dict:
    values = {'sku': f'SKU-{i:08d}', 'quantity': i % 1000}
    if SHAPE == 'narrow':
        return {**values, 'active': i % 2 == 0}
    values.update({
        'title': f'Bench item number {i}',
        'price': decimal.Decimal(i % 10000) / 100,
        'happened_at': EPOCH + datetime.timedelta(seconds=i),
        'active': i % 2 == 0,
        'notes': NOTES,
    })
    if SHAPE == 'wide':
        values.update({
            'ref': uuid.UUID(int=i),
            'weight': i / 7,
            'big': 2**40 + i,
            'small': i % 100,
            'day': EPOCH.date() + datetime.timedelta(days=i % 3650),
            'email': f'user{i}@example.com',
            'slug': f'bench-item-{i}',
            'maybe': None if i % 3 else f'sometimes {i}',
            'attributes': {'color': ['red', 'green', 'blue'][i % 3], 'sizes': [i % 5, i % 7],
                           'dims': {'w': i % 100, 'h': (i * 3) % 100}, 'tags': [f't{i % 11}', 'bench']},
            'body': BODY,
            'ratio': decimal.Decimal(i % 1000) / 1000,
        })
    return values


def item_fields():
    """An abstract model with the bench row's fields (imported from the apps' models modules)."""
    from django.db import models

    if SHAPE == 'narrow':
        class NarrowFields(models.Model):
            sku = models.CharField(max_length=40)
            quantity = models.IntegerField()
            active = models.BooleanField(default=True)

            class Meta:
                abstract = True

        return NarrowFields

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

    if SHAPE == 'item':
        return ItemFields

    class WideFields(ItemFields):
        ref = models.UUIDField()
        weight = models.FloatField()
        big = models.BigIntegerField()
        small = models.SmallIntegerField()
        day = models.DateField()
        email = models.EmailField()
        slug = models.SlugField(max_length=80)
        maybe = models.CharField(max_length=40, null=True)
        attributes = models.JSONField()
        body = models.TextField()
        ratio = models.DecimalField(max_digits=6, decimal_places=3)

        class Meta:
            abstract = True

    return WideFields
