"""Recomputes the tamper evidence of the audit trail (`manage.py audit_verify`).

Checks, in order: every seal's chain link and range, each entry's keyed digest against its
content (naming the first entry that does not match), each seal's digest over its entries
(entries removed or inserted), then the digests of the entries no seal covers, then that no
two entries are one (a genuine entry copied in).

What the database alone cannot show: the newest seals deleted with what they covered, and the
gap sealed again (the chain is whole again). Each seal is logged when written
(`audit.seal seq=... digest=...`); a seal recorded outside the database that way and passed
as an anchor must still be there with its digest.
"""

from dataclasses import dataclass

from django.db.models import Count, Min, Q

from .integrity import GENESIS, entry_digest_of, seal_digest
from .models import AuditEntry, AuditSeal
from .services import seal_basis, seal_entries

CHUNK = 2000


@dataclass(frozen=True)
class Finding:
    kind: str  # entry_altered | entry_copied | seal_mismatch | seal_chain_broken | anchor_missing
    message: str
    entry_id: int | None = None
    seal_seq: int | None = None


def audit_verify(*, limit: int = 20, anchors: tuple[tuple[int, str], ...] = ()) -> list[Finding]:
    """Up to `limit` findings, the first one first; an empty list means the trail is intact.
    `anchors`: (seq, digest) of seals recorded outside the database, which must be there."""
    findings: list[Finding] = _anchor_findings(anchors)
    prev_digest, expected_lo, expected_seq = GENESIS, 0, 1
    for seal in AuditSeal.objects.order_by("seq").iterator(chunk_size=CHUNK):
        if (seal.seq, seal.prev_digest, seal.lo) != (expected_seq, prev_digest, expected_lo):
            findings.append(
                Finding(
                    "seal_chain_broken",
                    f"seal {seal.seq} does not follow seal {expected_seq - 1} (expected seq "
                    f"{expected_seq}, lo {expected_lo} and the previous digest)",
                    seal_seq=seal.seq,
                )
            )
        entries = seal_entries(basis=seal.basis, lo=seal.lo, hi=seal.hi)
        pairs = []
        for entry in entries.iterator(chunk_size=CHUNK):
            _check_entry(entry, findings)
            pairs.append((entry.pk, entry.digest))
        digest, count = seal_digest(
            prev_digest=seal.prev_digest, basis=seal.basis, lo=seal.lo, hi=seal.hi, entries=pairs
        )
        if digest != seal.digest:
            ids = f"entries {seal.first_entry_id}..{seal.last_entry_id}"
            findings.append(
                Finding(
                    "seal_mismatch",
                    f"seal {seal.seq} ({ids}) does not match: it sealed {seal.entry_count} "
                    f"entries, {count} are there now"
                    + (" (entries were removed or added)" if count != seal.entry_count else ""),
                    entry_id=_first_difference(seal, pairs),
                    seal_seq=seal.seq,
                )
            )
        if len(findings) >= limit:
            return findings[:limit]
        prev_digest, expected_lo, expected_seq = seal.digest, seal.hi, seal.seq + 1
    # Every entry no seal covers: those not sealed yet, and any outside the sealed ranges
    # (a txid moved below zero, or to NULL by its table's owner, would otherwise be in no
    # range at all, and never sealed).
    key = "txid" if seal_basis() == AuditSeal.Basis.TXID else "id"
    unsealed = (
        Q(**{f"{key}__gte": expected_lo}) | Q(**{f"{key}__lt": 0}) | Q(**{f"{key}__isnull": True})
    )
    for entry in AuditEntry.objects.filter(unsealed).order_by("id").iterator(chunk_size=CHUNK):
        _check_entry(entry, findings)
        if len(findings) >= limit:
            return findings[:limit]
    findings.extend(_copies(limit - len(findings)))
    return findings[:limit]


def _copies(limit: int) -> list[Finding]:
    """Entries that repeat another's digest: a genuine entry copied in (the digest does not
    cover the row's id, so a copy verifies by itself, and a seal made after it covers it).
    No two genuine entries share one: each names its entity, action and time to the
    microsecond."""
    repeated = (
        AuditEntry.objects.values("digest")
        .annotate(copies=Count("id"), first=Min("id"))
        .filter(copies__gt=1)
        .order_by("first")[:limit]  # a query each below: no more than are reported
    )
    findings = []
    for row in repeated:
        same = AuditEntry.objects.filter(digest=row["digest"]).order_by("id")
        ids = list(same.values_list("id", flat=True))
        findings.append(
            Finding(
                "entry_copied",
                f"audit entries {', '.join(map(str, ids))} are the same entry (one digest): all "
                f"but entry {ids[0]} were copied in",
                entry_id=ids[1],
            )
        )
    return findings


def _anchor_findings(anchors: tuple[tuple[int, str], ...]) -> list[Finding]:
    findings = []
    for seq, digest in anchors:
        held = AuditSeal.objects.filter(seq=seq).values_list("digest", flat=True).first()
        if held != digest:
            state = "is missing" if held is None else f"now has digest {held}"
            findings.append(
                Finding(
                    "anchor_missing",
                    f"seal {seq}, recorded outside the database with digest {digest}, {state}: "
                    "seals were deleted or rewritten",
                    seal_seq=seq,
                )
            )
    return findings


def _check_entry(entry: AuditEntry, findings: list[Finding]) -> None:
    if entry_digest_of(entry) != entry.digest:
        findings.append(
            Finding(
                "entry_altered",
                f"audit entry {entry.pk} ({entry.action} {entry.entity_type}:{entry.entity_id}) "
                "does not match its digest: it was changed after it was written",
                entry_id=entry.pk,
            )
        )


def _first_difference(seal: AuditSeal, pairs: list[tuple[int, str]]) -> int | None:
    """The first id where the range no longer starts or ends as sealed, when visible."""
    if not pairs:
        return seal.first_entry_id
    if pairs[0][0] != seal.first_entry_id:
        return min(pairs[0][0], seal.first_entry_id)
    if pairs[-1][0] != seal.last_entry_id:
        return min(pairs[-1][0], seal.last_entry_id)
    return None
