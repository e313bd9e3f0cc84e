"""cqrs_celery: replicate Django models from the service that owns them to read-only copies, over Celery."""

from cqrs_celery.constants import SignalType
from cqrs_celery.exceptions import (
    ApplyError,
    BrokerUnavailableError,
    ConfigurationError,
    CQRSError,
    DataError,
    EnvelopeError,
    MetaError,
    PublishError,
    UnknownCQRSIdError,
    UnroutableError,
    UnsupportedVersionError,
)

__version__ = '0.1.0'

__all__ = [
    'ApplyError',
    'BrokerUnavailableError',
    'CQRSError',
    'ConfigurationError',
    'DataError',
    'EnvelopeError',
    'MetaError',
    'PublishError',
    'SignalType',
    'UnknownCQRSIdError',
    'UnroutableError',
    'UnsupportedVersionError',
    '__version__',
]
