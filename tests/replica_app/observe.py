"""Test-only observer: records each finished envelope and its outcome in AppliedLog."""

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import TASK_NAME


def record_outcome(sender=None, args=(), retval=None, **kwargs):
    if getattr(sender, 'name', None) != TASK_NAME or not args or not isinstance(args[0], dict):
        return
    from tests.replica_app.models import AppliedLog

    raw = args[0]
    data = raw.get('instance_data') if isinstance(raw.get('instance_data'), dict) else {}
    AppliedLog.objects.create(
        queue=get_settings().queue or '', cqrs_id=str(raw.get('cqrs_id')), pk_value=str(raw.get('instance_pk')),
        signal=str(raw.get('signal_type')), revision=data.get('cqrs_revision') if isinstance(
            data.get('cqrs_revision'), int) else None,
        outcome=str(retval), directed_to=raw.get('queue'),
        node=getattr(getattr(sender, 'request', None), 'hostname', None) or '',
    )
