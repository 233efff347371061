# A statement that charges the budget inside itself (an earning's one write statement, see
# loyalty/services/ingestion/statement.py) calls this when no free shard could pay: the
# statement then fails as a whole, and so does whatever was sent with it (its transaction's
# other writes and COMMIT travel in the same round trip), and the service retries the event
# on the guarded path. A distinct SQLSTATE tells this refusal from any other error.

from django.db import migrations

CREATE = """
CREATE FUNCTION loyalty_budget_retry() RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'no free budget shard could pay for this event'
        USING ERRCODE = 'LY001', HINT = 'Retried by the service on the guarded path.';
END
$$
"""
DROP = "DROP FUNCTION loyalty_budget_retry()"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("loyalty", "0006_hot_path_constraints")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
