"""Replica models of the test project (the same CQRS_IDs as ``master_app``)."""

from django.db import models

from cqrs_celery.mixins import RawReplicaMixin, ReplicaMixin


class ReplicaAuthor(ReplicaMixin):
    CQRS_ID = 'author'
    CQRS_META = True

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    email = models.EmailField(blank=True)
    last_meta = models.JSONField(null=True)
    last_previous = models.JSONField(null=True)

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        return super().cqrs_create(sync, {**mapped_data, 'last_meta': meta, 'last_previous': previous_data})

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        return super().cqrs_update(sync, {**mapped_data, 'last_meta': meta, 'last_previous': previous_data})


class ReplicaBook(ReplicaMixin):
    CQRS_ID = 'book'
    CQRS_MAPPING = {'id': 'id', 'title': 'name', 'price': 'price', 'author': 'author_id', 'published': 'published'}

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=4)
    author_id = models.BigIntegerField()
    published = models.DateField(null=True)
    last_previous = models.JSONField(null=True)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        self.last_previous = previous_data
        return super().cqrs_update(sync, mapped_data, previous_data)


class ReplicaItem(ReplicaMixin):
    CQRS_ID = 'item'

    sku = models.CharField(max_length=40, primary_key=True)
    name = models.CharField(max_length=100)
    quantity = models.IntegerField()


class ReplicaPublisher(ReplicaMixin):
    CQRS_ID = 'publisher'
    CQRS_ONLY_DIRECT_SYNCS = True

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)


class ReplicaAllFields(ReplicaMixin):
    CQRS_ID = 'all_fields'

    id = models.UUIDField(primary_key=True)
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
    author_id = models.BigIntegerField(null=True)


class ReplicaSerializedBook(ReplicaMixin):
    CQRS_ID = 'serialized_book'

    id = models.BigIntegerField(primary_key=True)
    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)


class NoteEvent(models.Model):
    """What the raw replica below saw: it keeps no copy, only a log of events."""

    cqrs_id = models.CharField(max_length=50)
    signal = models.CharField(max_length=10)
    payload = models.JSONField()


class ManualNoteSink(RawReplicaMixin):
    CQRS_ID = 'manual_note'
    CQRS_META = True

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        return NoteEvent.objects.create(cqrs_id=cls.CQRS_ID, signal='SYNC' if sync else 'SAVE',
                                        payload={'data': master_data, 'meta': meta})

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        NoteEvent.objects.create(cqrs_id=cls.CQRS_ID, signal='DELETE', payload={'data': master_data})
        return True


class AppliedLog(models.Model):
    """Every envelope a replica worker finished, with its outcome (written by a task_postrun hook)."""

    queue = models.CharField(max_length=100)
    cqrs_id = models.CharField(max_length=50)
    pk_value = models.CharField(max_length=100)
    signal = models.CharField(max_length=10)
    revision = models.IntegerField(null=True)
    outcome = models.CharField(max_length=20)
    directed_to = models.CharField(max_length=100, null=True)
    node = models.CharField(max_length=200, default='')
    #: PostgreSQL backend of the worker's connection when it finished the row (connections per worker).
    backend_pid = models.IntegerField(null=True)


class ReplicaFlaky(ReplicaMixin):
    """Fails on purpose in the replica service whose CQRS_TEST_FAULT_DIR is set.

    Attempts are counted in files (they must survive the rolled-back transaction of a failed
    attempt and be visible to every pool process); ``fail_times = -1`` fails while the file
    ``always_fail_<pk>`` exists in the fault directory.
    """

    CQRS_ID = 'flaky'

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    fail_times = models.IntegerField()

    @classmethod
    def _maybe_fail(cls, mapped_data):
        from tests.replica_app.faults import maybe_fail

        maybe_fail(mapped_data['id'], mapped_data['cqrs_revision'], mapped_data['fail_times'])

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        cls._maybe_fail(mapped_data)
        return super().cqrs_create(sync, mapped_data, previous_data)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        self._maybe_fail(mapped_data)
        return super().cqrs_update(sync, mapped_data, previous_data)


class ReplicaLongKey(ReplicaMixin):
    CQRS_ID = 'long_key'

    key = models.TextField(primary_key=True)
    value = models.IntegerField()


class ReplicaRenamed(ReplicaMixin):
    CQRS_ID = 'renamed'
    CQRS_MAPPING = {'number': 'remote_id', 'name': 'title'}

    remote_id = models.BigIntegerField(primary_key=True)
    title = models.CharField(max_length=100)


class ReplicaGadget(ReplicaMixin):
    CQRS_ID = 'gadget'

    id = models.BigIntegerField(primary_key=True)
    blob = models.TextField(null=True)
    opaque = models.TextField(null=True)
