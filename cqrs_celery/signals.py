"""Signals cqrs_celery sends, for bulk operations that Django's own signals do not cover."""

from django.dispatch import Signal

#: Sent after ``Model.cqrs.bulk_create``; arguments: ``sender`` (model), ``instances``, ``using``.
post_bulk_create = Signal()

#: Sent after ``Model.cqrs.bulk_update``; arguments: ``sender`` (model), ``instances``, ``using``.
post_update = Signal()

#: Sent by a replica worker for every row it finished with (applied, skipped, retried or
#: dead-lettered), after the row's transaction; arguments: ``sender`` (the task), ``envelope``
#: (``None`` for a body that could not be decoded), ``outcome`` (``'created'``, ``'stale'``,
#: ``'retrying'``, ``'dead_lettered'``…), ``queue``, ``raw`` (the undecodable body, else ``None``).
#: Connect to it to feed metrics; a receiver that raises is logged, never breaks the apply.
envelope_handled = Signal()

__all__ = ['envelope_handled', 'post_bulk_create', 'post_update']

#: Sent by the master when a broadcast publish reached no replica queue (no replica service has
#: bound a queue for that CQRS_ID). Arguments: ``sender`` (``None``), ``cqrs_id``, ``exchange``,
#: ``rows`` (rows in the message), ``kept`` (True on Redis and the filesystem broker: the outbox
#: keeps the events and retries them; False on RabbitMQ: they are not kept, a late replica gets
#: them through its first-run sync or reconciliation). ``cqrs_celery.producer.unroutable_counts()``
#: gives the totals of the process.
unroutable = Signal()

__all__ = [*__all__, 'unroutable']
