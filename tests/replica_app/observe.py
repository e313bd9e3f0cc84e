"""Test-only observer: records each finished envelope row and its outcome in AppliedLog."""

from cqrs_celery.conf import get_settings


def record_outcome(sender=None, envelope=None, outcome=None, queue=None, raw=None, **kwargs):
    from tests.replica_app.models import AppliedLog

    if envelope is not None:
        fields = {'cqrs_id': envelope.cqrs_id, 'pk_value': str(envelope.instance_pk),
                  'signal': envelope.signal_type.value, 'revision': envelope.revision,
                  'directed_to': envelope.queue}
    else:
        body = raw if isinstance(raw, dict) else {}
        data = body.get('instance_data') if isinstance(body.get('instance_data'), dict) else {}
        revision = data.get('cqrs_revision')
        fields = {'cqrs_id': str(body.get('cqrs_id')), 'pk_value': str(body.get('instance_pk')),
                  'signal': str(body.get('signal_type')), 'directed_to': body.get('queue'),
                  'revision': revision if isinstance(revision, int) and not isinstance(revision, bool) else None}
    AppliedLog.objects.create(queue=get_settings().queue or '', outcome=str(outcome), backend_pid=_backend_pid(),
                              node=getattr(getattr(sender, 'request', None), 'hostname', None) or '', **fields)


def _backend_pid():
    from django.db import connection

    raw = connection.connection
    return getattr(getattr(raw, 'info', None), 'backend_pid', None)
