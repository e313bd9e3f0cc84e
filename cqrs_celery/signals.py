"""Signals cqrs_celery sends, for bulk operations that Django's own signals do not cover."""

from django.dispatch import Signal

#: Sent after ``Model.cqrs.bulk_create``; arguments: ``sender`` (model), ``instances``, ``using``.
post_bulk_create = Signal()

#: Sent after ``Model.cqrs.bulk_update``; arguments: ``sender`` (model), ``instances``, ``using``.
post_update = Signal()

__all__ = ['post_bulk_create', 'post_update']
