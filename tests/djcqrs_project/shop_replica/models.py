"""The replica service's models (django-cqrs form): overrides a migrating team relies on."""

from dj_cqrs.mixins import ReplicaMixin
from django.db import models


class ProductRef(ReplicaMixin, models.Model):
    CQRS_ID = 'product'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    released = models.DateTimeField(null=True)
    saved_by = models.CharField(max_length=40, blank=True)
    previous_name = models.CharField(max_length=100, blank=True)

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        master_data['saved_by'] = 'cqrs_save override'
        return super().cqrs_save(master_data, previous_data=previous_data, sync=sync, meta=meta)

    def cqrs_update(self, sync, mapped_data, **kwargs):
        previous = kwargs.get('previous_data') or {}
        if 'name' in previous:
            mapped_data['previous_name'] = previous['name']
        return super().cqrs_update(sync, mapped_data, **kwargs)


class CustomerRef(ReplicaMixin):
    CQRS_ID = 'customer'
    CQRS_META = True
    CQRS_MAPPING = {'id': 'id', 'email': 'email_address', 'name': 'full_name'}

    id = models.IntegerField(primary_key=True)
    email_address = models.EmailField()
    full_name = models.CharField(max_length=100)
    tenant = models.CharField(max_length=40, blank=True)

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        return super().cqrs_create(sync, {**mapped_data, 'tenant': (meta or {}).get('tenant', '')}, previous_data)


class OrderEvent(models.Model):
    order_id = models.IntegerField()
    kind = models.CharField(max_length=10)
    tenant = models.CharField(max_length=40, blank=True)
    revision = models.IntegerField()


class OrderFeed(ReplicaMixin):
    """No table: every order event is appended to OrderEvent instead."""

    CQRS_ID = 'order'
    CQRS_META = True
    CQRS_NO_DB_OPERATIONS = True

    class Meta:
        abstract = True

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        return OrderEvent.objects.create(order_id=master_data['id'], kind='sync' if sync else 'save',
                                         tenant=(meta or {}).get('tenant', ''), revision=master_data['cqrs_revision'])

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        OrderEvent.objects.create(order_id=master_data['id'], kind='delete', tenant=(meta or {}).get('tenant', ''),
                                  revision=master_data['cqrs_revision'])
        return True
