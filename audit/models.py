"""The append-only, tamper-evident audit trail.

Append-only in the database itself: triggers refuse UPDATE, DELETE and TRUNCATE on both
tables, and unlike pgtrigger's own `Protect` they offer no `pgtrigger.ignore` escape (a
session variable any connection could set). Only the table owner can get round them, by
disabling the trigger, which is what the tamper evidence is for:

- every entry carries an HMAC of its content, keyed by `AUDIT_HMAC_KEY` (not in the database),
  so an entry edited behind the trigger's back is named by `audit_verify`;
- the `audit_seal` job chains sealed digests over the entries of finished transactions (by
  transaction id, see `AuditSeal`), so a removed or inserted entry breaks a seal.

Writers never read or lock a shared row: the HMAC needs only the entry itself, and sealing
reads committed entries after the fact.
"""

import pgtrigger
from django.db import models

REFUSE_CHANGE_FUNCTION = "audit_refuse_change"


class CurrentTransactionId(models.Func):
    """The writing transaction's 64-bit id (PostgreSQL `xid8`), as the column's DB default.

    SQLite has one writer at a time and no transaction ids: 0 there, and seals use entry ids.
    """

    template = "pg_current_xact_id()::text::bigint"
    output_field = models.BigIntegerField()

    def as_sqlite(self, compiler, connection, **extra_context):
        return "0", []


class AppendOnly(pgtrigger.Trigger):
    """BEFORE trigger that runs `audit_refuse_change()` (created by migration 0002).

    The trigger executes our own function rather than pgtrigger's generated one, because the
    generated one first checks the `pgtrigger.ignore` session variable and would let any
    connection that sets it through.
    """

    when = pgtrigger.Before

    def get_func(self, model):
        # pgtrigger still creates its function; make it refuse too, should anything call it.
        return "RAISE EXCEPTION 'audit: % is append-only', TG_TABLE_NAME;"

    def render_execute(self, model):
        return f"{REFUSE_CHANGE_FUNCTION}()"


def append_only_triggers(prefix: str) -> list[pgtrigger.Trigger]:
    return [
        AppendOnly(
            name=f"{prefix}_no_update_delete", operation=pgtrigger.Update | pgtrigger.Delete
        ),
        AppendOnly(
            name=f"{prefix}_no_truncate", operation=pgtrigger.Truncate, level=pgtrigger.Statement
        ),
    ]


class AuditEntry(models.Model):
    """One write in the system: who did what to which entity, before and after (PII masked)."""

    entity_type = models.CharField(max_length=32)
    entity_id = models.CharField(max_length=64)
    action = models.CharField(max_length=64)
    merchant_id = models.CharField(max_length=64, blank=True)
    actor_id = models.CharField(max_length=128)
    actor_role = models.CharField(max_length=32)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    # The API credential of the request ("jwt:<jti or sub>", "apikey:<prefix>"); empty for
    # staff in the admin and for jobs.
    credential_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    changes = models.JSONField(default=dict, blank=True)
    # Set by audit_record (not auto_now_add) so the HMAC covers exactly the stored instant.
    created_at = models.DateTimeField()
    # HMAC-SHA256 of the content above (audit.integrity.entry_digest), hex.
    digest = models.CharField(max_length=64)
    # The writing transaction; a seal covers every entry of a range of finished transactions.
    txid = models.BigIntegerField(db_default=CurrentTransactionId(), editable=False)

    class Meta:
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["entity_type", "entity_id", "id"]),
            models.Index(fields=["actor_id", "id"]),
            models.Index(fields=["action", "id"]),
            models.Index(fields=["merchant_id", "id"]),
            # `created_at` (the search's since/until, the admin's date filter) has a BRIN
            # index, created on PostgreSQL by migration 0005: entries are appended in time
            # order, so block ranges suffice for those range filters, and it costs no btree
            # insert per write.
            models.Index(fields=["txid", "id"]),
        ]
        triggers = append_only_triggers("audit_entry")

    def __str__(self) -> str:
        return f"{self.action} {self.entity_type}:{self.entity_id} by {self.actor_id}"


class AuditSeal(models.Model):
    """A sealed digest over every audit entry written by transactions `lo <= txid < hi`
    (entry ids on SQLite), chained to the previous seal.

    A seal is only taken up to the oldest transaction still running (the snapshot's xmin),
    so no entry can ever appear in a sealed range afterwards: the set is final when sealed.
    """

    class Basis(models.TextChoices):
        TXID = "txid"
        ID = "id"

    seq = models.PositiveBigIntegerField(unique=True)
    basis = models.CharField(max_length=4, choices=Basis.choices)
    lo = models.BigIntegerField(unique=True)
    hi = models.BigIntegerField()
    entry_count = models.PositiveIntegerField()
    first_entry_id = models.BigIntegerField()
    last_entry_id = models.BigIntegerField()
    prev_digest = models.CharField(max_length=64)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.CheckConstraint(condition=models.Q(hi__gt=models.F("lo")), name="seal_range"),
        ]
        triggers = append_only_triggers("audit_seal")

    def __str__(self) -> str:
        return f"seal {self.seq} ({self.basis} {self.lo}..{self.hi}, {self.entry_count} entries)"
