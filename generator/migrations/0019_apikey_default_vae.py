from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("generator", "0018_site_record"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="default_vae",
            field=models.CharField(
                blank=True, help_text="The key's own VAE (A1111's `sd_vae` option).", max_length=500
            ),
        ),
    ]
