"""Master models of the test project: each exercises part of the master API."""

import uuid

from django.db import models

from cqrs_celery.metas import MasterMeta
from cqrs_celery.mixins import MasterMixin, RawMasterMixin
from tests.master_app.fields import BlobField, OpaqueField


class Author(MasterMixin):
    CQRS_ID = 'author'
    CQRS_TRACKED_FIELDS = ['name']

    name = models.CharField(max_length=100)
    email = models.EmailField(blank=True)

    def get_cqrs_meta(self, **kwargs):
        meta = super().get_cqrs_meta(**kwargs)
        meta['tenant'] = 'acme'
        return meta


class Book(MasterMixin):
    CQRS_ID = 'book'
    CQRS_TRACKED_FIELDS = ['title', 'price']
    CQRS_FIELDS = ['id', 'title', 'price', 'author', 'published']

    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=4)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name='books')
    published = models.DateField(null=True, blank=True)
    internal_note = models.TextField(blank=True)


class Item(MasterMixin):
    """Natural (explicit) primary key: rows are deleted and re-created under the same pk."""

    CQRS_ID = 'item'

    sku = models.CharField(max_length=40, primary_key=True)
    name = models.CharField(max_length=100)
    quantity = models.IntegerField(default=0)


class Publisher(MasterMixin):
    """Replicated only to services that ask for directed syncs."""

    CQRS_ID = 'publisher'

    name = models.CharField(max_length=100)


class AllFields(MasterMixin):
    """One field of each concrete Django type, for the round-trip table."""

    CQRS_ID = 'all_fields'

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    big = models.BigIntegerField(null=True)
    small = models.SmallIntegerField(null=True)
    positive = models.PositiveIntegerField(null=True)
    flag = models.BooleanField(null=True)
    char = models.CharField(max_length=50, null=True)
    text = models.TextField(null=True)
    slug = models.SlugField(null=True)
    email = models.EmailField(null=True)
    url = models.URLField(null=True)
    ip = models.GenericIPAddressField(null=True)
    decimal = models.DecimalField(max_digits=30, decimal_places=15, null=True)
    floating = models.FloatField(null=True)
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    duration = models.DurationField(null=True)
    token = models.UUIDField(null=True)
    blob = models.BinaryField(null=True)
    document = models.JSONField(null=True)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)


class SerializedBook(MasterMixin):
    """Serialized by a DRF serializer (CQRS_SERIALIZER)."""

    CQRS_ID = 'serialized_book'
    CQRS_SERIALIZER = 'tests.master_app.serializers.SerializedBookSerializer'

    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)


class Shelf(MasterMixin):
    """Serialized by a DRF serializer that lists rows of another table (``ShelfBook``)."""

    CQRS_ID = 'shelf'
    CQRS_SERIALIZER = 'tests.master_app.serializers.ShelfSerializer'

    name = models.CharField(max_length=100)

    @classmethod
    def relate_cqrs_serialization(cls, queryset):
        return queryset.prefetch_related('books')


class ShelfBook(models.Model):
    """Not replicated itself: part of its shelf's serialized state."""

    shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE, related_name='books')
    title = models.CharField(max_length=200)

    class Meta:
        ordering = ['id']


class ManualNote(RawMasterMixin):
    """RawMasterMixin: publishes only through cqrs_sync()."""

    CQRS_ID = 'manual_note'

    text = models.CharField(max_length=100)


class Flaky(MasterMixin):
    """Replicated to a replica model that fails on purpose (see replica_app.ReplicaFlaky)."""

    CQRS_ID = 'flaky'

    name = models.CharField(max_length=100)
    #: How many attempts the replica fails before it succeeds; -1: until its fault file is removed.
    fail_times = models.IntegerField(default=0)


class PlainItem(models.Model):
    """Item without cqrs_celery: the baseline the benchmarks compare against."""

    sku = models.CharField(max_length=40, primary_key=True)
    name = models.CharField(max_length=100)
    quantity = models.IntegerField(default=0)


class LongKey(MasterMixin):
    """A primary key far longer than 255 characters (deleted and re-created under the same key)."""

    CQRS_ID = 'long_key'

    key = models.TextField(primary_key=True)
    value = models.IntegerField(default=0)


class Renamed(MasterMixin):
    """Replicated to a model whose primary key has another name (CQRS_MAPPING renames the pk)."""

    CQRS_ID = 'renamed'

    number = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=100)


class Gadget(MasterMixin):
    """Custom fields: one with value_to_string, one without (saving an object in it is refused)."""

    CQRS_ID = 'gadget'

    blob = BlobField(null=True)
    opaque = OpaqueField(null=True)


# --- models for the django-cqrs compatibility tests (tests/test_compat_master.py) --------------


class CompatSimple(MasterMixin):
    """django-cqrs's SimplestModel: an explicit integer pk and one nullable field."""

    CQRS_ID = 'cm_simple'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)


class CompatTrackedParent(MasterMixin):
    CQRS_ID = 'cm_tracked_parent'
    CQRS_TRACKED_FIELDS = '__all__'

    char_field = models.CharField(max_length=10)


class CompatTrackedChild(MasterMixin):
    CQRS_ID = 'cm_tracked_child'
    CQRS_TRACKED_FIELDS = ('char_field', 'parent')

    char_field = models.CharField(max_length=10)
    parent = models.ForeignKey(CompatTrackedParent, on_delete=models.CASCADE, null=True)


class CompatTrackedBulk(MasterMixin):
    """django-cqrs's SimplestTrackedModel."""

    CQRS_ID = 'cm_tracked_bulk'
    CQRS_TRACKED_FIELDS = ('status', 'description')

    id = models.IntegerField(primary_key=True)
    status = models.CharField(max_length=200, null=True)
    description = models.CharField(max_length=200, null=True)


class CompatFiltered(MasterMixin):
    """Only rows with a name longer than two characters are published."""

    CQRS_ID = 'cm_filtered'

    name = models.CharField(max_length=200)

    def is_sync_instance(self):
        return len(str(self.name)) > 2


class CompatNamed(models.Model):
    """A base that is not a cqrs_celery mixin and comes first (as MPTTModel does)."""

    name = models.CharField(max_length=50)

    class Meta:
        abstract = True


class CompatRegistered(CompatNamed, RawMasterMixin):
    """RawMasterMixin behind another base, made a publishing master by ``MasterMeta.register``."""

    CQRS_ID = 'cm_registered'
    CQRS_TRACKED_FIELDS = '__all__'


MasterMeta.register(CompatRegistered)


class CompatProxy(CompatSimple):
    """A proxy with a CQRS_ID of its own, registered by hand (proxies are never registered on their own)."""

    CQRS_ID = 'cm_proxy'

    class Meta:
        proxy = True


MasterMeta.register(CompatProxy)


class Vehicle(MasterMixin):
    """The parent of a multi-table child: its table holds the revision of both."""

    CQRS_ID = 'vehicle'

    plate = models.CharField(max_length=20, primary_key=True)


class Truck(Vehicle):
    """Multi-table inheritance: its rows' revision lives in the parent's table."""

    CQRS_ID = 'truck'

    load = models.IntegerField(default=0)
