"""On PostgreSQL, the database itself wakes idle workers when a session enters the queue.

A trigger sends `NOTIFY sdsite_queue` (`generator.notify.QUEUE_CHANNEL`) for each row that
becomes pending: inserted as pending, or changed to pending from another state (re-queued,
released at shutdown, recovered from a lost worker). PostgreSQL delivers a notification when
the transaction commits, so a woken worker finds the row, and sends one per transaction
however many rows it queued. No caller can forget it or send it twice (generator/states.py).
Nothing on SQLite, whose workers poll.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION sdsite_session_queued() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending') THEN
        PERFORM pg_notify('sdsite_queue', '');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER sdsite_session_queued
    AFTER INSERT OR UPDATE OF status ON generator_generationsession
    FOR EACH ROW EXECUTE FUNCTION sdsite_session_queued();
"""

DROP = """
DROP TRIGGER IF EXISTS sdsite_session_queued ON generator_generationsession;
DROP FUNCTION IF EXISTS sdsite_session_queued();
"""


def on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("generator", "0015_parameters_json")]

    operations = [migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP))]
