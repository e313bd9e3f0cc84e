"""Model mixins for both sides: ``from cqrs_celery.mixins import MasterMixin, ReplicaMixin``."""

from cqrs_celery.master.mixins import MasterManager, MasterMixin, RawMasterMixin
from cqrs_celery.replica.mixins import RawReplicaMixin, ReplicaMixin

__all__ = ['MasterManager', 'MasterMixin', 'RawMasterMixin', 'RawReplicaMixin', 'ReplicaMixin']
