"""Ledger keys held by pending approval requests.

An adjustment that waits for approval writes its entry only when the last approval lands,
under the idempotency key it was sent with. Until then its pending request holds that key
(`ApprovalRequest.ledger_key`, unique among pending requests of a program): any other event
with the key in the program is refused, as a key already used for a different event would
be (422 `idempotency_key_reused`), so the approved adjustment can still write it. The
request being executed no longer holds it (`approvals.services._execute` marks it first),
nor one past its expiry, which can never run.

Two requests racing on one key (the gate's insert and an ingestion's probe in the same
instant) can still both pass: the approval's run then fails on the key and records
`idempotency_key_reused` on the request, with nothing written.
"""

import uuid

from django.db import connection
from django.utils import timezone

from ...errors import IdempotencyKeyReused
from ..balances import db_id


# The approvals app's table (that app depends on this one, not the reverse). The predicate
# repeats the partial unique index's, so a generic plan may still use that index.
def held_sql(program: str = "%s") -> str:
    """The pending request holding the key in `program` (an SQL expression); parameters: the
    key, then the time now."""
    return (
        f"SELECT r.id FROM approvals_approvalrequest r WHERE r.program_id = {program}"  # noqa: S608 (ours)
        " AND r.ledger_key = %s AND r.status = 'pending' AND r.ledger_key <> ''"
        # One past its expiry (the time, a parameter) can never run; the job closes it later.
        " AND r.expires_at > %s"
    )


HELD_SQL = held_sql()


def key_held(holder, idempotency_key: str) -> IdempotencyKeyReused:
    """The refusal of an event whose key the pending request `holder` holds."""
    return IdempotencyKeyReused(
        "This idempotency key is held by an adjustment waiting for approval.",
        idempotency_key=idempotency_key,
        approval_request_id=str(uuid.UUID(str(holder))),  # SQLite reads its hex form
    )


def key_holder(program_pk, idempotency_key: str):
    """The id of the pending request holding the key in the program, or None."""
    with connection.cursor() as cursor:
        cursor.execute(HELD_SQL, [db_id(program_pk), idempotency_key, timezone.now()])
        row = cursor.fetchone()
    return None if row is None else row[0]
