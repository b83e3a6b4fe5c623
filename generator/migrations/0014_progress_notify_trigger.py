"""On PostgreSQL, the database itself announces every change of a session row.

A trigger NOTIFYs the progress channel (`generator.notify.CHANNEL`) with the row's
id after each UPDATE or DELETE, inside the writing statement: a progress write is
one round trip instead of two (the UPDATE, then a `SELECT pg_notify`), and no
writer can forget to announce a change. Nothing on SQLite, whose readers poll.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION sdsite_session_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('sdsite_progress', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER sdsite_session_changed
    AFTER UPDATE OR DELETE ON generator_generationsession
    FOR EACH ROW EXECUTE FUNCTION sdsite_session_changed();
"""

DROP = """
DROP TRIGGER IF EXISTS sdsite_session_changed ON generator_generationsession;
DROP FUNCTION IF EXISTS sdsite_session_changed();
"""


def on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("generator", "0013_schedule_type")]

    operations = [migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP))]
