import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """Outbox events name the changed row; the publisher reads its committed state in bulk."""

    dependencies = [
        ('cqrs_celery', '0002_outbox'),
    ]

    operations = [
        migrations.RemoveIndex(model_name='outboxevent', name='cqrs_outbox_row'),
        migrations.AlterField(model_name='outboxevent', name='pk_value', field=models.TextField()),
        migrations.AlterField(model_name='outboxevent', name='envelope',
                              field=models.TextField(blank=True, default='')),
        migrations.AddField(model_name='outboxevent', name='signal_type',
                            field=models.CharField(default='SAVE', max_length=8)),
        migrations.AddField(model_name='outboxevent', name='attempts', field=models.IntegerField(default=0)),
        migrations.AddField(model_name='outboxevent', name='error', field=models.TextField(blank=True, default='')),
        migrations.AddField(model_name='outboxevent', name='available_at',
                            field=models.DateTimeField(default=django.utils.timezone.now)),
        migrations.AddField(model_name='outboxevent', name='set_aside', field=models.BooleanField(default=False)),
        migrations.AddIndex(model_name='outboxevent',
                            index=models.Index(fields=['set_aside', 'available_at'], name='cqrs_outbox_ready')),
    ]
