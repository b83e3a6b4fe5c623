from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("generator", "0019_apikey_default_vae"),
    ]

    operations = [
        migrations.AddField(
            model_name="workerrecord",
            name="loaded_models",
            field=models.TextField(
                blank=True,
                help_text='The pipelines it holds loaded, "backend model" a line: their jobs go to it.',
            ),
        ),
    ]
