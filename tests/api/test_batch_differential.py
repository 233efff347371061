"""A batch answers and writes what its items sent one by one would: the same random events
(purchases, refunds, referrals, bonuses, adjustments small and gated, repeated keys, new and
frozen members, odd metadata numbers, times, currencies, budgets and daily caps near their
end) sent one by one over HTTP to programs A and as batches of random sizes over HTTP to
identical programs B leave the same answers item by item, the same ledger entries,
balances, lots, outbox events, audit entries, approval requests and budget spent (ids and
times aside), and their resends answer alike. A few seeds and sizes run here; for a longer
search: FUZZ_SEEDS=100,101,... FUZZ_SIZES=250,300 (FUZZ_V1=1: the first harness's settings,
the budget and daily cap only). Written by a review helper; it found the batch's held-back
items running after the rest (tests/api/test_batch_in_order.py).

Documented differences are normalised, not counted: `POST /events` keeps a refusal under its
Idempotency-Key where a batch leaves the key free (the single side's refusals are dropped),
and answers from its stored HTTP answer first (`HTTP_REUSE` against the batch's 4xx)."""

import json
import os
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Sum

from access.models import IdempotencyRecord
from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance, OutboxEvent, PointLot, Program
from loyalty.services import event_ingest
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db

D = Decimal
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OWN = "m_own"

BALANCE_FIELDS = [
    "points_balance",
    "locked",
    "lifetime_earned",
    "lifetime_redeemed",
    "lifetime_spend",
    "tier",
    "tier_updated_at",
    "churn_risk",
    "engagement_score",
    "fraud_flags",
    "is_frozen",
    "earned_day",
    "earned_today",
    "purchase_count",
    "last_purchase_at",
    "last_activity_at",
    "created_at",
    "updated_at",
]
ENTRY_FIELDS = [
    "type",
    "points",
    "amount",
    "currency",
    "module",
    "reference",
    "idempotency_key",
    "balance_after",
    "reason",
    "details",
    "metadata",
    "actor_id",
    "actor_role",
    "occurred_at",
    "created_at",
]

RAW_NUMBERS = [
    "1e23",
    "7.0",
    "-0",
    "-0.0",
    "1E+2",
    "0.1",
    "123456789012345678901234567890",
    "1e-7",
    "2.50",
    "1.0e1",
]


def raw_json(obj) -> str:
    """json.dumps, with ("RAW", text) tuples written as the raw JSON number text."""
    marks = {}

    def conv(o):
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, list):
            if len(o) == 2 and o[0] == "__RAW__":
                mark = f"__RAWMARK{len(marks)}__"
                marks[mark] = o[1]
                return mark
            return [conv(v) for v in o]
        return o

    text = json.dumps(conv(obj))
    for mark, raw in marks.items():
        text = text.replace(json.dumps(mark), raw)
    return text


def gen_metadata(rng):
    kind = rng.random()
    if kind < 0.4:
        return None
    meta = {}
    for i in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.5:
            meta[f"n{i}"] = ["__RAW__", rng.choice(RAW_NUMBERS)]
        elif choice < 0.7:
            meta[f"o{i}"] = {"x": ["__RAW__", rng.choice(RAW_NUMBERS)], "y": [1, "a", None, True]}
        elif choice < 0.85:
            meta[f"s{i}"] = rng.choice(["é", "\u2028", "a\\b", "", "x" * 30])
        else:
            meta[f"l{i}"] = [["__RAW__", rng.choice(RAW_NUMBERS)], {"z": False}]
    return meta


MEMBERS_EXISTING = ["e1", "e2", "e3", "rich"]
MEMBERS_FROZEN = ["fz"]


PROGRAM_CURRENCIES = ["XOF", "XOF"]


def gen_events(rng, n):
    """A list of (key, body-without-program) dicts."""
    events = []
    purchases = []  # (reference, member, amount)
    keys_used = []
    new_counter = 0
    for i in range(n):
        r = rng.random()
        members = MEMBERS_EXISTING + MEMBERS_FROZEN + [f"n{j}" for j in range(new_counter)]
        if rng.random() < 0.15:
            new_counter += 1
            member = f"n{new_counter - 1}"
        else:
            member = rng.choice(members)
        # Repeat a key?
        if keys_used and rng.random() < 0.12:
            prev = rng.choice(keys_used)
            if rng.random() < 0.6:
                events.append(dict(prev))  # same body
            else:
                ev = dict(prev)
                mutation = rng.choice(["member", "meta", "occurred", "module"])
                if mutation == "member":
                    ev["member_id"] = rng.choice(members)
                elif mutation == "meta":
                    ev["metadata"] = {"changed": ["__RAW__", "1"]}
                elif mutation == "occurred":
                    ev["occurred_at"] = "2026-11-20T03:17:00Z"
                else:
                    ev["module"] = "other"
                events.append(ev)
            continue
        pidx = rng.randint(0, 1)
        key = rng.choice([f"k{i}-{rng.randint(0, 999)}", f"shared-{pidx}-{rng.randint(0, 5)}"])
        cur = PROGRAM_CURRENCIES[pidx]
        ev = {"member_id": member, "idempotency_key": key, "_p": pidx}
        if rng.random() < 0.04:
            ev.update(
                type="purchase",
                amount=rng.choice(["1.234", "abc", "-5", "1e3"]),
                currency=cur,
                reference=f"bad-{i}",
            )
            events.append(ev)
            keys_used.append(ev)
            continue
        if r < 0.4:
            amount = rng.choice(
                ["100", "12500", "999.99", "50000", "1", "0.01", "250000", "7", "99999999999"]
            )
            ref = f"ord-{i}"
            ev.update(
                type="purchase",
                amount=amount,
                currency=rng.choice([cur] * 9 + ["USD", "EUR"]),
                reference=ref,
                module=rng.choice(["eats", "shop", ""]),
            )
            if not ev["module"]:
                del ev["module"]
            purchases.append((ref, member, D(amount)))
        elif r < 0.55:
            if purchases and rng.random() < 0.8:
                ref, pmember, pamount = rng.choice(purchases)
                if rng.random() < 0.85:
                    member = pmember
                frac = rng.choice(["0.5", "1", "1.5", "0.1", "0.33"])
                amount = str((pamount * D(frac)).quantize(D("0.01")))
                if D(amount) <= 0:
                    amount = "0.01"
            else:
                ref, amount = rng.choice(["unknown-ref", "s-ord-e1"]), "500"
            ev.update(
                type="refund",
                member_id=member,
                amount=amount,
                currency=rng.choice([cur] * 9 + ["EUR"]),
                original_reference=ref,
            )
        elif r < 0.7:
            ev.update(
                type="referral", points=rng.choice(["50", "0.5", "200", "3000"]), reason="ref"
            )
        elif r < 0.75:
            ev.update(
                type="campaign_bonus", points=rng.choice(["10", "75.25", "1000"]), reason="camp"
            )
        else:
            ev.update(
                type="manual_adjust",
                points=rng.choice(
                    [
                        "25",
                        "-40",
                        "-100000",
                        "10000",
                        "10000.01",
                        "15000",
                        "-12000",
                        "0.01",
                        "-0.01",
                    ]
                ),
                reason="adj",
            )
        if rng.random() < 0.3:
            ev["occurred_at"] = rng.choice(
                [
                    "2026-11-27T03:17:00Z",
                    "2026-11-26T23:59:59Z",
                    "2026-11-27T11:59:00+01:00",
                    "2026-10-01T00:00:00Z",
                    "2026-11-27T12:00:00.123456Z",
                    "2026-11-28T12:00:00Z",
                    "2020-01-01T00:00:00Z",
                ]
            )
        meta = gen_metadata(rng)
        if meta is not None:
            ev["metadata"] = meta
        events.append(ev)
        keys_used.append(ev)
    return events


def budget_set_limit_(program, limit):
    from loyalty.services.budget import budget_set_limit

    budget_set_limit(program=program, limit=limit)


def setup_program(make_program, actor, name, **settings):
    extra_budget = None if os.environ.get("FUZZ_V1") else settings.pop("budget_limit", None)
    program = make_program(merchant_id=OWN, name=name, **settings)
    with time_machine.travel(NOW - timedelta(days=1), tick=False):
        for member in MEMBERS_EXISTING + MEMBERS_FROZEN:
            amount = "100000" if member == "rich" else "20000"
            event_ingest(
                program=program,
                event=PurchaseFactory(
                    member_id=member,
                    amount=D(amount),
                    idempotency_key=f"s-{member}",
                    reference=f"s-ord-{member}",
                    currency=program.currency,
                ),
                actor=actor,
            )
    MemberBalance.objects.filter(program=program, member_id__in=MEMBERS_FROZEN).update(
        is_frozen=True
    )
    if extra_budget is not None and os.environ.get("FUZZ_V1"):
        program.budget_limit = extra_budget
        program.save(update_fields=["budget_limit"])
        budget_set_limit_(program, extra_budget)
    elif extra_budget is not None:
        from loyalty.services.budget import budget_set_limit, budget_spent

        program.budget_limit = budget_spent(program=program) + extra_budget
        program.save(update_fields=["budget_limit"])
        budget_set_limit(program=program, limit=program.budget_limit)
    return program


def body_for(programs, ev):
    body = {k: v for k, v in ev.items() if k not in ("idempotency_key", "_p")}
    body["program_id"] = str(programs[ev.get("_p", 0)].pk)
    return body


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def map_tx(obj, ranks):
    if isinstance(obj, dict):
        return {
            k: (
                ("tx", ranks.get(int(v), "?"))
                if k.endswith("transaction_id") and v is not None and str(v).isdigit()
                else map_tx(v, ranks)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [map_tx(v, ranks) for v in obj]
    return obj


def norm(obj, programs, ranks=None):
    if ranks is None:
        ranks = tx_ranks(programs)
    obj = map_tx(json.loads(json.dumps(obj, default=str)), ranks)
    text = json.dumps(obj, sort_keys=True, default=str)
    for i, program in enumerate(programs):
        text = text.replace(str(program.pk), f"<PROGRAM{i}>")
    return json.loads(UUID_RE.sub("<UUID>", text))


def norm_answer(status, body, program, tx_rank):
    body = json.loads(json.dumps(body))
    if isinstance(body, dict):
        body.pop("instance", None)
        if body.get("code") == "idempotency_key_reused" and "different request" in body.get(
            "detail", ""
        ):
            # The HTTP record's own reuse answer (docs/API.md: stored answers come first).
            return status, "HTTP_REUSE"
    return status, norm(body, program, tx_rank)


def send_single(client, program, ev):
    response = client.client.post(
        "/api/v1/events",
        raw_json(body_for(program, ev)),
        content_type="application/json",
        headers={"Authorization": client.auth, "Idempotency-Key": ev["idempotency_key"]},
    )
    replayed = response.get("Idempotent-Replayed") == "true"
    if response.status_code >= 400:
        # docs/API.md: a batch's refused item leaves its key free; POST /events keeps the
        # refusal under its Idempotency-Key. Make the single path's key free as the batch's.
        IdempotencyRecord.objects.filter(
            key=ev["idempotency_key"], response_status__gte=400
        ).delete()
    return response.status_code, response.json(), replayed


def send_batch(client, program, evs, key):
    body = {
        "events": [
            {**body_for(program, ev), "idempotency_key": ev["idempotency_key"]} for ev in evs
        ]
    }
    response = client.client.post(
        "/api/v1/events/batch",
        raw_json(body),
        content_type="application/json",
        headers={"Authorization": client.auth, "Idempotency-Key": key},
    )
    assert response.status_code == 200, response.content
    out = []
    for item in response.json()["results"]:
        status = item["status"]
        body = item.get("body") if "body" in item else item.get("error")
        out.append((status, body, item.get("replayed", False)))
    return out, response


def tx_ranks(programs):
    ids = list(
        LedgerEntry.objects.filter(program__in=programs).order_by("id").values_list("id", flat=True)
    )
    return {pk: i for i, pk in enumerate(ids)}


def program_rows(programs, pidx):
    ranks = tx_ranks(programs)
    program = programs[pidx]
    entries = list(
        LedgerEntry.objects.filter(program=program).select_related("balance").order_by("id")
    )
    balances = {
        b.member_id: {f: getattr(b, f) for f in BALANCE_FIELDS}
        for b in MemberBalance.objects.filter(program=program)
    }
    outbox = sorted(
        (
            e.event_type,
            json.dumps(norm(e.payload, programs, ranks), sort_keys=True),
            str(e.created_at),
        )
        for e in OutboxEvent.objects.filter(program=program)
    )
    entry_ids = {str(e.pk): ranks[e.pk] for e in entries}
    audit = sorted(
        (
            a.entity_type,
            a.action,
            entry_ids.get(a.entity_id, "?"),
            a.actor_id,
            a.actor_role,
            a.merchant_id,
            json.dumps(norm(a.changes, programs, ranks), sort_keys=True),
            str(a.created_at),
            a.credential_id == "",
        )
        for a in AuditEntry.objects.filter(entity_type="transaction", entity_id__in=list(entry_ids))
    )
    approvals = sorted(
        (
            r.operation,
            json.dumps(norm(r.payload, programs, ranks), sort_keys=True),
            str(r.amount),
            norm(r.target, programs, ranks),
            r.ledger_key,
            r.status,
            json.dumps(r.required_roles),
            r.maker_id,
            r.maker_role,
            str(r.created_at),
            str(r.expires_at),
        )
        for r in ApprovalRequest.objects.filter(target__contains=str(program.pk))
    )
    approval_audit = sorted(
        (a.action, a.actor_id, json.dumps(norm(a.changes, programs, ranks), sort_keys=True))
        for a in AuditEntry.objects.filter(
            entity_type__in=["approval_request", "approval"],
            entity_id__in=[
                str(pk)
                for pk in ApprovalRequest.objects.filter(
                    target__contains=str(program.pk)
                ).values_list("pk", flat=True)
            ],
        )
    )
    program_row = Program.objects.get(pk=program.pk)
    return {
        "entries": [
            (
                e.balance.member_id,
                *(
                    norm(getattr(e, f), programs, ranks)
                    if f in ("details", "metadata")
                    else getattr(e, f)
                    for f in ENTRY_FIELDS
                ),
                None if e.original_entry_id is None else ranks[e.original_entry_id],
            )
            for e in entries
        ],
        "balances": balances,
        "lots": [
            (
                lot.balance.member_id,
                ranks[lot.entry_id],
                lot.points,
                lot.remaining,
                lot.earned_at,
                lot.expires_at,
            )
            for lot in PointLot.objects.filter(program=program)
            .select_related("balance")
            .order_by("id")
        ],
        "outbox": outbox,
        "audit": audit,
        "approvals": approvals,
        "approval_audit": approval_audit,
        "budget_spent": BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"],
        "program_budget": (getattr(program_row, "budget_spent", None),),
    }


def row_diff(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)][:3], len(a), len(b)
    if isinstance(a, list) and isinstance(b, list):
        out = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y][:3]
        return out, len(a), len(b)
    return a, b


HTTP_LAYER = []


def compare_answers(seq, singles, batches, prog_a, prog_b, label):
    ranks_a, ranks_b = tx_ranks(prog_a), tx_ranks(prog_b)
    diffs = []
    for i, (s, b) in enumerate(zip(singles, batches, strict=True)):
        sa = (*norm_answer(s[0], s[1], prog_a, ranks_a), s[2])
        ba = (*norm_answer(b[0], b[1], prog_b, ranks_b), b[2])
        if sa[1] == "HTTP_REUSE" and 400 <= ba[0] < 500:
            HTTP_LAYER.append((label, i))
            continue
        if sa != ba:
            diffs.append((label, i, seq[i], sa, ba))
    return diffs


# (seed, size): a few small sequences, and seed 110 at 250 items, whose batches held back an
# item behind a gated adjustment (161 differences before that was mended).
CASES = [(seed, size) for seed in range(1, 6) for size in (20, 60, 150)] + [(110, 250)]
if os.environ.get("FUZZ_SEEDS"):
    CASES = [
        (int(seed), int(size))
        for seed in os.environ["FUZZ_SEEDS"].split(",")
        for size in os.environ.get("FUZZ_SIZES", "20,60,150").split(",")
    ]


@pytest.mark.parametrize(("seed", "size"), CASES)
def test_a_batch_answers_and_writes_what_its_items_one_by_one_would(
    seed, size, make_program, actor, api
):
    rng = random.Random(seed * 1000 + size)
    PROGRAM_CURRENCIES[:] = [rng.choice(["XOF", "USD", "TND", "JPY"]) for _ in range(2)]
    if os.environ.get("FUZZ_V1"):
        settings = {
            "sira_settings": {"enabled": rng.random() < 0.5},
            "budget_limit": D(rng.choice(["5000", "8000", "20000", "60000"]))
            if rng.random() < 0.7
            else None,
            "max_earn_per_day": D(rng.choice(["300", "2000", "100000"]))
            if rng.random() < 0.7
            else None,
        }
    else:
        settings = {
            "sira_settings": {"enabled": rng.random() < 0.5},
            "earn_rate": D(rng.choice(["0.02", "0.02", "0.0333", "1.5"])),
            "point_value": D(rng.choice(["1", "1", "0.5", "3", "0.013"])),
            "expiry_days": rng.choice([365, 30, None]),
            "expiry_rounding": rng.choice(["none", "month", "year"]),
            "refund_policy": rng.choice(["allow_negative", "cap_at_available"]),
            "fraud_detection_enabled": rng.random() < 0.7,
            "timezone": rng.choice(["Africa/Dakar", "Pacific/Kiritimati", "America/Los_Angeles"]),
            "budget_limit": D(rng.choice(["0", "1", "150", "1400", "4000", "50000"]))
            if rng.random() < 0.7
            else None,
            "max_earn_per_day": D(rng.choice(["300", "2000", "100000"]))
            if rng.random() < 0.7
            else None,
        }
    seq = gen_events(rng, size)
    with time_machine.travel(NOW - timedelta(days=2), tick=False):
        prog_a = [
            setup_program(make_program, actor, f"A{i}", currency=PROGRAM_CURRENCIES[i], **settings)
            for i in range(2)
        ]
        prog_b = [
            setup_program(make_program, actor, f"B{i}", currency=PROGRAM_CURRENCIES[i], **settings)
            for i in range(2)
        ]
    diffs = []
    with time_machine.travel(NOW, tick=False):
        client = api("system")
        singles = [send_single(client, prog_a, ev) for ev in seq]
        # batches of random sizes
        batches, pos, _chunk_no = [], 0, 0
        chunks = []
        while pos < len(seq):
            n = rng.choice([1, 5, 17, len(seq)])
            chunks.append((pos, seq[pos : pos + n]))
            pos += n
        for start, chunk in chunks:
            out, _ = send_batch(client, prog_b, chunk, f"batch-{seed}-{size}-{start}")
            batches.extend(out)
        diffs += compare_answers(seq, singles, batches, prog_a, prog_b, "first")
        for pidx in range(2):
            rows_a, rows_b = program_rows(prog_a, pidx), program_rows(prog_b, pidx)
            for name in rows_a:
                if rows_a[name] != rows_b[name]:
                    diffs.append(("rows", pidx, name, *row_diff(rows_a[name], rows_b[name])))

        # Replays: the same batches under the same keys replay bytes.
        for start, chunk in chunks[:3]:
            again, response = send_batch(client, prog_b, chunk, f"batch-{seed}-{size}-{start}")
            assert response["Idempotent-Replayed"] == "true"
            assert again == batches[start : start + len(chunk)]
        # Resend everything: singles under their keys, one batch under a new key.
        singles2 = [send_single(client, prog_a, ev) for ev in seq]
        batches2, _ = send_batch(client, prog_b, seq, f"batch-again-{seed}-{size}")
        diffs += compare_answers(seq, singles2, batches2, prog_a, prog_b, "resend")
        # Ledger replays on the single side: no HTTP record any more.
        IdempotencyRecord.objects.all().delete()
        singles3 = [send_single(client, prog_a, ev) for ev in seq]
        batches3, _ = send_batch(client, prog_b, seq, f"batch-again3-{seed}-{size}")
        diffs += compare_answers(seq, singles3, batches3, prog_a, prog_b, "ledger-resend")
        for pidx in range(2):
            rows_a, rows_b = program_rows(prog_a, pidx), program_rows(prog_b, pidx)
            for name in rows_a:
                if rows_a[name] != rows_b[name]:
                    diffs.append(
                        ("rows-after-resend", pidx, name, *row_diff(rows_a[name], rows_b[name]))
                    )
    assert ledger_verify() == []
    if diffs:
        lines = []
        shown = [d for d in diffs if d[0] == "first"][:3] + [d for d in diffs if d[0] == "rows"]
        for d in shown:
            lines.append(repr(d)[: int(os.environ.get("FUZZ_WIDTH", "3000"))])
        pytest.fail(
            f"{len(diffs)} divergences (seed {seed}, size {size}, settings {settings}):\n"
            + "\n\n".join(lines)
        )
