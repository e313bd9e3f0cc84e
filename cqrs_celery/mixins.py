"""Model mixins for both sides: ``from cqrs_celery.mixins import MasterMixin, ReplicaMixin``."""

from cqrs_celery.master.managers import MasterManager
from cqrs_celery.master.mixins import MasterMixin, RawMasterMixin
from cqrs_celery.replica.mixins import RawReplicaMixin, ReplicaMixin
from cqrs_celery.utils import bulk_relate_cqrs_serialization

__all__ = ['MasterManager', 'MasterMixin', 'RawMasterMixin', 'RawReplicaMixin', 'ReplicaMixin',
           'bulk_relate_cqrs_serialization']
