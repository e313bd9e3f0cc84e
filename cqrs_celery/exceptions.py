"""Exception hierarchy of cqrs_celery: every error the library raises derives from CQRSError."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured


class CQRSError(Exception):
    """Base class of every cqrs_celery error."""


class ConfigurationError(CQRSError, ImproperlyConfigured):
    """The ``CQRS`` setting or a model declaration is wrong; the message says how to fix it."""


class EnvelopeError(CQRSError):
    """An incoming message is not a valid envelope.

    Attributes:
        raw: the body exactly as it was received, kept for the dead-letter queue.
    """

    def __init__(self, message: str, raw: Any = None) -> None:
        super().__init__(message)
        self.raw = raw


class UnsupportedVersionError(EnvelopeError):
    """The envelope's schema version is not one this release can apply."""


class UnknownCQRSIdError(CQRSError):
    """No replica model on this service is registered for the envelope's CQRS_ID."""


class DataError(CQRSError):
    """The envelope's data does not fit the replica model's fields."""


class ApplyError(CQRSError):
    """The replica model refused or failed to apply an envelope; it may succeed on retry."""


class PublishError(CQRSError):
    """The master could not hand an envelope to the broker."""


class BrokerUnavailableError(PublishError):
    """The broker could not be reached (or did not confirm in time): nothing about the message is wrong."""


class UnroutableError(PublishError):
    """No queue is bound where the message was sent: the named replica queue does not exist, or (Redis,
    filesystem broker) no replica queue is bound to the model's exchange, so the outbox keeps the event."""


class MetaError(CQRSError, TypeError):
    """``get_cqrs_meta``, ``meta_function`` or ``correlation_function`` gave something that cannot travel."""
