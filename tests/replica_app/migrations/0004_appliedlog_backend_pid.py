from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('replica_app', '0003_appliedlog_node'),
    ]

    operations = [
        migrations.AddField(model_name='appliedlog', name='backend_pid', field=models.IntegerField(null=True)),
    ]
