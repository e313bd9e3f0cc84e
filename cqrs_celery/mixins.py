"""Model mixins for both sides: ``from cqrs_celery.mixins import MasterMixin, ReplicaMixin``."""

from cqrs_celery.master.mixins import MasterManager, MasterMixin, RawMasterMixin
from cqrs_celery.replica.mixins import RawReplicaMixin, ReplicaMixin
from cqrs_celery.utils import bulk_relate_cqrs_serialization

__all__ = ['MasterManager', 'MasterMixin', 'RawMasterMixin', 'RawReplicaMixin', 'ReplicaMixin',
           'bulk_relate_cqrs_serialization']
