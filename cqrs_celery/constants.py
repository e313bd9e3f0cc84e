"""Names and values shared by the master and replica sides."""

from __future__ import annotations

import enum

#: Name of the Celery task that carries every envelope.
TASK_NAME = 'cqrs_celery.apply'

#: Schema version of a single-row envelope (retries, directed syncs, dead letters).
ENVELOPE_VERSION = 1

#: Schema version of a batch: many rows of one CQRS_ID in one message (what the master publishes).
BATCH_VERSION = 2

#: Envelope schema versions this release can apply.
SUPPORTED_ENVELOPE_VERSIONS = frozenset({ENVELOPE_VERSION, BATCH_VERSION})

#: Field added to every master and replica model: +1 per committed change.
FIELD_REVISION = 'cqrs_revision'

#: Field added to every master and replica model: time of the last change.
FIELD_UPDATED = 'cqrs_updated'


# --- django-cqrs names (``dj_cqrs.constants``), for code moving from it --------------------------

#: ``CQRS_FIELDS`` / ``CQRS_TRACKED_FIELDS`` value meaning every concrete field.
ALL_BASIC_FIELDS = '__all__'

#: Attribute of a master model with tracked fields that holds its field tracker.
FIELDS_TRACKER_FIELD_NAME = 'cqrs_tracker'

#: Instance attribute holding what the last save captured (``get_tracked_fields_data()``).
TRACKED_FIELDS_ATTR_NAME = '_cqrs_tracked_data'

#: Default of ``CQRS['master']['CQRS_AUTO_UPDATE_FIELDS']``.
DEFAULT_MASTER_AUTO_UPDATE_FIELDS = False

#: Default of ``CQRS['master']['CQRS_MESSAGE_TTL']``: no expiry (django-cqrs: one day).
DEFAULT_MASTER_MESSAGE_TTL = None

#: Longest countdown of one retry hop on any broker, in seconds: a delayed message waits
#: unacknowledged in the worker, and RabbitMQ closes a channel that holds a delivery longer than
#: its consumer_timeout (30 minutes by default); longer back-offs travel as several hops.
MAX_HOP = 900.0

#: Clock difference between a replica service's hosts the queue gate tolerates in an ``eta``.
CLOCK_SKEW = 300.0

#: Only content type the replica task accepts.
JSON_CONTENT_TYPE = 'application/json'


class SignalType(str, enum.Enum):
    """What happened to the master row an envelope describes."""

    SAVE = 'SAVE'
    DELETE = 'DELETE'
    SYNC = 'SYNC'

    def __str__(self) -> str:
        return self.value

#: The replica side's reconciliation task (admitted on replica queues next to ``TASK_NAME``).
RECONCILE_TASK = 'cqrs_celery.reconcile'

#: The master side's reconciliation task (runs on the master's worker).
RECONCILE_MASTER_TASK = 'cqrs_celery.reconcile_master'
