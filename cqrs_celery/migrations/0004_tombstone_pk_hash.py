import hashlib
from typing import Any

from django.db import migrations, models


def fill_hashes(apps: Any, schema_editor: Any) -> None:
    """Key existing tombstones by the SHA-256 of their pk text."""
    using = schema_editor.connection.alias
    for name in ('MasterTombstone', 'ReplicaTombstone'):
        model = apps.get_model('cqrs_celery', name)
        for tombstone in model._default_manager.using(using).only('id', 'pk_value').iterator():
            digest = hashlib.sha256(tombstone.pk_value.encode('utf-8', 'surrogatepass')).hexdigest()
            model._default_manager.using(using).filter(id=tombstone.id).update(pk_hash=digest)


class Migration(migrations.Migration):
    """Tombstones of primary keys of any length: unique on (CQRS_ID, SHA-256 of the pk), pk kept as text."""

    dependencies = [
        ('cqrs_celery', '0003_outbox_references'),
    ]

    operations = [
        migrations.RemoveConstraint(model_name='mastertombstone', name='cqrs_master_tomb_uniq'),
        migrations.RemoveConstraint(model_name='replicatombstone', name='cqrs_replica_tomb_uniq'),
        migrations.AlterField(model_name='mastertombstone', name='pk_value', field=models.TextField()),
        migrations.AlterField(model_name='replicatombstone', name='pk_value', field=models.TextField()),
        migrations.AddField(model_name='mastertombstone', name='pk_hash', field=models.CharField(default='', max_length=64),
                            preserve_default=False),
        migrations.AddField(model_name='replicatombstone', name='pk_hash',
                            field=models.CharField(default='', max_length=64), preserve_default=False),
        migrations.RunPython(fill_hashes, migrations.RunPython.noop),
        migrations.AddConstraint(model_name='mastertombstone',
                                 constraint=models.UniqueConstraint(fields=('cqrs_id', 'pk_hash'),
                                                                    name='cqrs_master_tomb_key')),
        migrations.AddConstraint(model_name='replicatombstone',
                                 constraint=models.UniqueConstraint(fields=('cqrs_id', 'pk_hash'),
                                                                    name='cqrs_replica_tomb_key')),
    ]
