from django.apps import AppConfig


class ReplicaAppConfig(AppConfig):
    name = 'tests.replica_app'
    default_auto_field = 'django.db.models.BigAutoField'

    def ready(self):
        from cqrs_celery.signals import envelope_handled
        from tests.replica_app.observe import record_outcome

        envelope_handled.connect(record_outcome, weak=False, dispatch_uid='tests.record_outcome')
