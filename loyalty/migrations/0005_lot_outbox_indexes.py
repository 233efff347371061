# Every earning writes a point lot and an outbox event; each index on them is one more insert
# (and its WAL) per event. The ones dropped here serve no query:
# - pointlot.balance_id: every read of a member's lots is of its open lots (lots_consume, the
#   expiry and warning chunks: `remaining > 0`), served by the partial `lot_open_fifo`
#   (balance_id, id); ledger_verify reads the whole table.
# - pointlot.program_id: every read by program is of open lots (expiry, warnings,
#   _has_dated_lots), served by the partial `lot_open_expiry` (program_id, expires_at).
# - pointlot.entry_id: no query reads lots by entry (a refund sorts the member's open lots in
#   Python), and ledger entries are never deleted (append-only trigger), so no foreign key
#   check needs it.
# - outboxevent.program_id: nothing reads the outbox by program.
# - outboxevent.merchant_id `_like` (varchar_pattern_ops): for LIKE 'prefix%' only; the
#   admin's merchant scoping is an equality, served by the plain merchant_id index, kept.
# Merchants, programs and balances are never deleted (no service does; the admin forbids it),
# so the foreign keys' ON DELETE checks do not need these indexes. The constraints stay: only
# the indexes go (AlterField would drop and re-add each constraint, re-validating the table).

import django.db.models.deletion
from django.db import migrations, models


def drop(index, create):
    return migrations.RunSQL(f'DROP INDEX IF EXISTS "{index}"', create)


class Migration(migrations.Migration):

    dependencies = [
        ('loyalty', '0004_ledger_balance_indexes'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='outboxevent',
                    name='program',
                    field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='loyalty.program'),
                ),
                migrations.AlterField(
                    model_name='pointlot',
                    name='balance',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='lots', to='loyalty.memberbalance'),
                ),
                migrations.AlterField(
                    model_name='pointlot',
                    name='entry',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='lots', to='loyalty.ledgerentry'),
                ),
                migrations.AlterField(
                    model_name='pointlot',
                    name='program',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='lots', to='loyalty.program'),
                ),
            ],
            database_operations=[
                drop(
                    'loyalty_pointlot_balance_id_09c94d4c',
                    'CREATE INDEX "loyalty_pointlot_balance_id_09c94d4c" ON "loyalty_pointlot" ("balance_id")',
                ),
                drop(
                    'loyalty_pointlot_program_id_06733877',
                    'CREATE INDEX "loyalty_pointlot_program_id_06733877" ON "loyalty_pointlot" ("program_id")',
                ),
                drop(
                    'loyalty_pointlot_entry_id_93274cfe',
                    'CREATE INDEX "loyalty_pointlot_entry_id_93274cfe" ON "loyalty_pointlot" ("entry_id")',
                ),
                drop(
                    'loyalty_outboxevent_program_id_06aef3bd',
                    'CREATE INDEX "loyalty_outboxevent_program_id_06aef3bd" ON "loyalty_outboxevent" ("program_id")',
                ),
                drop(
                    'loyalty_outboxevent_merchant_id_747da2c8_like',
                    'CREATE INDEX "loyalty_outboxevent_merchant_id_747da2c8_like" ON "loyalty_outboxevent" ("merchant_id" varchar_pattern_ops)',
                ),
            ],
        ),
    ]
