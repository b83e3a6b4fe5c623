"""The parameters nobody queries move from a column each into one `parameters` JSON field.

The columns that queries, the fair batching and the admin's filters and search read stay
(prompt, negative prompt, seed, size, model, backend). Each row's values of the others are
copied into `parameters` (under the same names), then their columns go. Runs on SQLite and
PostgreSQL alike; reversible.
"""

from django.db import migrations, models

import generator.params

MOVED = (
    "steps",
    "guidance_scale",
    "scheduler",
    "schedule_type",
    "strength",
    "resize_mode",
    "mask_blur",
    "inpainting_fill",
)
"""The columns this migration folds into `parameters` (fixed here: the spec may grow)."""
BATCH = 500


def into_json(apps, schema_editor):
    Session = apps.get_model("generator", "GenerationSession")
    rows = []
    for row in Session.objects.only("pk", *MOVED).iterator(chunk_size=BATCH):
        row.parameters = {name: getattr(row, name) for name in MOVED}
        rows.append(row)
        if len(rows) == BATCH:
            Session.objects.bulk_update(rows, ["parameters"])
            rows = []
    Session.objects.bulk_update(rows, ["parameters"])


def out_of_json(apps, schema_editor):
    Session = apps.get_model("generator", "GenerationSession")
    field_defaults = {name: Session._meta.get_field(name).get_default() for name in MOVED}
    rows = []
    for row in Session.objects.only("pk", "parameters").iterator(chunk_size=BATCH):
        for name in MOVED:
            setattr(row, name, (row.parameters or {}).get(name, field_defaults[name]))
        rows.append(row)
        if len(rows) == BATCH:
            Session.objects.bulk_update(rows, list(MOVED))
            rows = []
    Session.objects.bulk_update(rows, list(MOVED))


class Migration(migrations.Migration):
    dependencies = [("generator", "0014_progress_notify_trigger")]

    operations = [
        migrations.AddField(
            model_name="generationsession",
            name="parameters",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="The other parameters of params.py, by name (absent: the spec's default).",
                validators=[generator.params.check_json],
            ),
        ),
        migrations.RunPython(into_json, out_of_json),
        *(migrations.RemoveField(model_name="generationsession", name=name) for name in MOVED),
    ]
