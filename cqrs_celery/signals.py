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

#: Sent after each reconciliation run, by the master when it finishes the run and by the replica
#: when the master's report arrives; arguments: ``sender`` (``ReconciliationRun``), ``run`` (the
#: recorded row), ``cqrs_id``, ``queue``, ``side`` (``'master'`` or ``'replica'``), ``drift``
#: (``{'missing', 'stale', 'ahead', 'changed', 'extra'}`` → rows).
reconciled = Signal()

__all__ += ['reconciled']

#: Sent by the master when a broadcast publish reached no replica queue (no replica service has
#: bound a queue for that CQRS_ID). Arguments: ``sender`` (``None``), ``cqrs_id``, ``exchange``,
#: ``rows`` (rows in the message), ``kept`` (True on Redis and the filesystem broker: the outbox
#: keeps the events and retries them; False on RabbitMQ: they are not kept, a late replica gets
#: them through its first-run sync or reconciliation). ``cqrs_celery.producer.unroutable_counts()``
#: gives the totals of the process.
unroutable = Signal()

__all__ = [*__all__, 'unroutable']

# --- observability: one signal per stage, for metrics -----------------------------------------
# Payloads are built only when a receiver is connected (``has_listeners``), so an unobserved
# service pays one attribute check per message. Receivers run in the publishing or applying
# process; one that raises is logged and ignored. ``latency`` is seconds from the row's master
# save (``cqrs_updated`` in the envelope) to now, ``None`` when the envelope has no such time.

#: Sent by the master after the broker accepted one message (a single row or a batch), from the
#: process that published it (web process, publisher thread, beat relay, ``cqrs_sync``). Arguments:
#: ``sender`` (the CQRS_ID), ``cqrs_id``, ``pks`` and ``revisions`` (lists, in row order),
#: ``queue`` (the target queue of a directed sync or retry, else ``None``), ``exchange``,
#: ``routing_key``, ``latency`` (of the oldest row: from its save to the broker's acceptance) and
#: ``duration`` (seconds the publish itself took).
envelopes_published = Signal()

#: Sent by a replica worker after a row's change was applied (outcome ``'created'``,
#: ``'updated'``, ``'deleted'``, ``'tombstoned'`` or ``'handled'``). Arguments: ``sender`` (the
#: CQRS_ID), ``cqrs_id``, ``pk``, ``revision``, ``outcome``, ``queue``, ``latency``, ``envelope``.
envelope_applied = Signal()

#: Sent by a replica worker for a row it left alone: ``outcome`` is ``'stale'`` (an older
#: revision), ``'duplicate'`` (the revision it holds) or ``'not_for_me'`` (a sync directed to another
#: queue, or ``CQRS_ONLY_DIRECT_SYNCS``). Same arguments as :data:`envelope_applied`.
envelope_skipped = Signal()

#: Sent by a replica worker when a row failed and a retry was sent to its own queue. Arguments as
#: :data:`envelope_applied`, plus ``attempt`` (the retry's number, 1 for the first retry),
#: ``delay`` (seconds until it runs) and ``exception``.
envelope_retried = Signal()

#: Sent by a replica worker after a dead letter was published. Arguments: ``sender`` (the CQRS_ID,
#: or ``None`` for a body that names none), ``cqrs_id``, ``pk``, ``revision`` (``None`` when
#: unknown), ``queue``, ``latency``, ``reason``, ``attempts`` (attempts made), ``exception``,
#: ``envelope`` (``None`` for a body that could not be decoded).
envelope_dead_lettered = Signal()

__all__ = [
    'envelope_applied',
    'envelope_dead_lettered',
    'envelope_handled',
    'envelope_retried',
    'envelope_skipped',
    'envelopes_published',
    'post_bulk_create',
    'post_update',
    'reconciled',
    'unroutable',
]
