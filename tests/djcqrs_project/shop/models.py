"""The master service's models (django-cqrs form)."""

from dj_cqrs.mixins import MasterMixin
from django.db import models


class Product(MasterMixin, models.Model):
    CQRS_ID = 'product'
    CQRS_TRACKED_FIELDS = ('name', 'price')

    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    released = models.DateTimeField(null=True)


class Customer(MasterMixin, models.Model):
    CQRS_ID = 'customer'

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)


class Order(MasterMixin, models.Model):
    CQRS_ID = 'order'

    number = models.CharField(max_length=20)
    total = models.DecimalField(max_digits=10, decimal_places=2)
