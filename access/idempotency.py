"""HTTP idempotency for every write (`Idempotency-Key` header).

The first request with a key claims it (a row unique per scope and key, committed at once);
its outcome is stored when it ends. A repeat with the same body replays the stored status and
body with `Idempotent-Replayed: true`; a repeat with another body is refused (422
`idempotency_key_reused`); a repeat while the first still runs gets 409
`idempotency_in_progress`. Records are kept `LOYALTY_IDEMPOTENCY_TTL_HOURS` (>= 24 h).

Stored outcomes: 2xx, 409 and 422 (the request was decided). Other failures (400 validation,
404, 5xx) release the claim, since nothing happened and the client may retry with a fixed
request under the same key. An outcome is stored as the bytes of its answer and replayed as
they are: never parsed, never encoded again.
"""

import functools
import hashlib
import json
import re
from datetime import timedelta
from decimal import Decimal

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from rest_framework.exceptions import ParseError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from loyalty.errors import (
    Conflict,
    DomainError,
    IdempotencyKeyReused,
    NotFound,
    PermissionMissing,
    ValidationFailed,
)

from .models import IdempotencyRecord
from .rows import RowLookup

HEADER = "Idempotency-Key"
_HEADER_META = "HTTP_IDEMPOTENCY_KEY"
REPLAY_HEADER = "Idempotent-Replayed"


def replay_headers(replayed: bool) -> dict[str, str] | None:
    """The headers of an answer a view made from what the key already wrote (the ledger's
    entry, the redemption): a replay says so, as one from the stored record does."""
    return {REPLAY_HEADER: "true"} if replayed else None


# Printable ASCII, no spaces. The text is also the schema's pattern (JSON Schema's `$` ends
# the input); Python must use fullmatch: its `$` also matches before a final newline.
KEY_REGEX = r"^[\x21-\x7e]{1,255}$"
KEY_PATTERN = re.compile(KEY_REGEX)
KEY_RULE = "1 to 255 printable ASCII characters without spaces."
STORED_STATUSES = {409, 422}


class IdempotencyKeyMissing(DomainError):
    code = "idempotency_key_missing"
    http_status = 400
    title = "Writes need an Idempotency-Key header"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    title = "A request with this idempotency key is still being processed"


# Values `_canonical` keeps as they are: a plain dict of only these is returned, not copied.
_PLAIN_TYPES = frozenset({str, bool, type(None)})


# Deeper than any body the API reads (a batch's event metadata: 11 levels at most); past
# Python's recursion limit (~490 levels here) a body would otherwise fail with a 500.
MAX_BODY_DEPTH = 64


# The largest power of ten (either sign) `_number_text` writes out in plain digits; past it,
# digits and exponent. Written out, `1E+999999` is a megabyte of text; the parser refuses such
# numbers (access.parsers.MAX_NUMBER_EXPONENT), this keeps the fingerprint from expanding any
# it lets through. Within it the text is what fingerprints have always used (stored records of
# ordinary numbers still match their repeats).
PLAIN_EXPONENT = 100


def _number_text(value: int | Decimal) -> str:
    """A number's exact canonical text, trailing zeros dropped: "100" for 100 and 100.00,
    "-0.5", "1E+101" (sign, digits, exponent) once it is far from the decimal point. Exact,
    never rounded: Decimal's `normalize()` rounds to the context's 28 digits (and overflows
    past its exponent limit)."""
    number = Decimal(value)  # exact for int and Decimal
    if not number.is_finite():
        return str(number)
    sign, digits, exponent = number.as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    if not text:  # zero, whatever its exponent: "0" or "-0", as normalize() gave
        return "-0" if sign else "0"
    exponent += len(digits) - len(text)
    if -PLAIN_EXPONENT <= exponent <= PLAIN_EXPONENT:
        return format(Decimal((sign, tuple(map(int, text)), exponent)), "f")
    return f"{'-' if sign else ''}{text}E{exponent:+d}"


def _canonical(value, depth: int = 0):
    """Numbers (parsed as int or Decimal) as exact normalized text (`_number_text`): 100 ==
    100.00, and 100.000000000000000001 differs (never rounded through float); written as
    {"#": text}, which no object of the body can read as. A body nested deeper than
    MAX_BODY_DEPTH is refused (400)."""
    if (
        type(value) is dict
        and _PLAIN_TYPES.issuperset(map(type, value.values()))
        and "#" not in "".join(value)  # no key starts with "#" (a cheap superset test)
    ):
        return value  # most events: texts only (a copy cost ~2 us an event)
    if isinstance(value, dict | list) and depth >= MAX_BODY_DEPTH:
        raise ParseError(f"JSON nested more than {MAX_BODY_DEPTH} levels.")
    if isinstance(value, dict):
        # A key starting with "#" gets one more: no object of the body can then read as a
        # number's {"#": text}, nor as another object ("#" -> "##", "##" -> "###").
        return {f"#{k}" if k[:1] == "#" else k: _canonical(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v, depth + 1) for v in value]
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return {"#": _number_text(value)}
    return value


def _canonical_json(value) -> bytes:
    """`json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))`, encoded: the
    same bytes, written by orjson (a 1,000-event body: 4.5 ms by json, 0.8 ms so). orjson
    writes non-ASCII and DEL as they are, which json escapes (ensure_ascii): such a body,
    and any orjson refuses, goes through json."""
    canonical = _canonical(value)
    try:
        encoded = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        encoded = None
    if encoded is None or not encoded.isascii() or b"\x7f" in encoded:
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return encoded


def request_fingerprint(request) -> str:
    """Method, path (as the URL configuration writes it) and the body as canonical JSON (key
    order and spacing do not matter)."""
    head = f"{request.method}\n{_canonical_path(request)}\n".encode()
    return hashlib.sha256(head + _canonical_json(request.data)).hexdigest()


def _canonical_path(request) -> str:
    """The path as the URL configuration writes it for the view and arguments it resolved to:
    a voucher code names its voucher in either case, so a retry that spells it in the other
    is the same request. A path without arguments is as sent."""
    match = request.resolver_match
    if match is None or not (match.args or match.kwargs):
        return request.path
    try:
        return reverse(match.view_name, args=match.args, kwargs=match.kwargs)
    except NoReverseMatch:
        return request.path


def idempotency_key(request) -> str:
    # From META, as authentication reads its header: `request.headers` would first copy
    # every header of the request into a new mapping.
    key = request.META.get(_HEADER_META)
    if key is None:
        raise IdempotencyKeyMissing(f"Send a unique `{HEADER}` header with every write.")
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(errors={HEADER: [KEY_RULE]})
    return key


# The columns a claim writes, in the order of `_claim_sql`'s placeholders.
CLAIM_FIELDS = (
    "scope",
    "key",
    "method",
    "path",
    "request_hash",
    "credential_id",
    "status",
    "response_status",
    "response_bytes",
    "response_body",
    "response_content_type",
    "created_at",
    "locked_until",
    "completed_at",
    "expires_at",
)


# A new claim commits without waiting for its WAL flush (PostgreSQL's `synchronous_commit =
# off`, for this one transaction): it is visible to concurrent repeats at once all the same,
# and whatever the request then commits (the event, the stored answer) waits for a flush that
# covers the claim too, WAL being written in order. A crash can only lose a claim whose
# request had committed nothing yet: as if that request never came, which a retry then
# answers. Saves one WAL flush, a few milliseconds of latency, per write request. Only in
# autocommit: inside a caller's transaction the setting would cover that whole transaction.
CLAIM_ASYNC_COMMIT = ", set_config('synchronous_commit', 'off', true)"


@functools.cache
def _insert_sql() -> tuple[str, list]:
    """INSERT of a record's CLAIM_FIELDS, and the fields; built once per process (the same text
    every time, so the database prepares it once per connection)."""
    qn = connection.ops.quote_name
    fields = [IdempotencyRecord._meta.get_field(name) for name in CLAIM_FIELDS]
    # Identifiers come from the model's metadata, values are bound parameters.
    sql = (
        f"INSERT INTO {qn(IdempotencyRecord._meta.db_table)} "  # noqa: S608
        f"({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    return sql, fields


@functools.cache
def _claim_sql(vendor: str, async_commit: bool = False) -> tuple[str, list]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, and its fields. On PostgreSQL the row is
    inserted only if the key's advisory lock (`key_lock`, one more parameter) is free: a
    KeyGuard's request holds it while it runs, and its record does not exist yet."""
    qn = connection.ops.quote_name
    sql, fields = _insert_sql()
    if vendor == "postgresql":
        # Typed placeholders: in a SELECT, PostgreSQL would take an untyped one (a NULL) for
        # text, which a bytea or jsonb column refuses. No lengths: a cast would truncate.
        values = ", ".join(f"%s::{_TYPE_LENGTH.sub('', f.db_type(connection))}" for f in fields)
        sql = f"{sql.partition(' VALUES ')[0]} SELECT {values} WHERE pg_try_advisory_xact_lock(%s)"
    # RETURNING runs for an inserted row only: a taken key wrote nothing to flush.
    returning = f"{qn('id')}{CLAIM_ASYNC_COMMIT if async_commit else ''}"
    return f"{sql} ON CONFLICT ({qn('scope')}, {qn('key')}) DO NOTHING RETURNING {returning}", (
        fields
    )


_TYPE_LENGTH = re.compile(r"\(\d+\)")


def key_lock(scope: str, key: str) -> int:
    """The key's transaction-level advisory lock (PostgreSQL's one-bigint form; nothing else
    in the product takes those): 64 bits of a digest, so two keys in flight never share one."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _params(values: dict, model_fields: list) -> list:
    if connection.vendor == "postgresql":
        # Text, integers, aware datetimes and NULLs: psycopg adapts them as they are (Django's
        # per-field preparation of 14 values costs a third of the claim's Python time).
        return [values[name] for name in CLAIM_FIELDS]
    return [f.get_db_prep_save(values[f.name], connection) for f in model_fields]


def _claim_insert(
    scope: str,
    key: str,
    fields: dict,
    also: RowLookup | None = None,
    *,
    wait_for_flush: bool = False,
):
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: the new record's id, or None when the
    key is taken (or, on PostgreSQL, its advisory lock held by a running request). One
    statement in autocommit (no savepoint, no exception to recover from): this runs on every
    write, so it is kept to a single round trip. With `also`, that row is read by the same
    statement: (id, instance or None). A claim commits without waiting for its WAL flush
    (CLAIM_ASYNC_COMMIT) unless `wait_for_flush` (an answer already sent)."""
    values = {"scope": scope, "key": key, **fields}
    postgresql = connection.vendor == "postgresql"
    sql, model_fields = _claim_sql(
        connection.vendor,
        async_commit=postgresql and not connection.in_atomic_block and not wait_for_flush,
    )
    params = _params(values, model_fields)
    if postgresql:
        params.append(key_lock(scope, key))
    if also is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return row[0] if row else None
    if connection.vendor != "postgresql":  # no INSERT inside a WITH: two statements
        return _claim_insert(scope, key, fields), also.get()
    table, columns, condition, also_params = also.sql()
    # One row always: the claim's id (NULL when taken) beside the looked-up row (NULLs when
    # none matches). Identifiers come from the models' metadata, values are bound parameters.
    joined = (
        f"WITH claim AS ({sql}) SELECT (SELECT id FROM claim), {columns} "  # noqa: S608
        f"FROM (SELECT 1) AS one LEFT JOIN {table} ON {condition}"
    )
    with connection.cursor() as cursor:
        cursor.execute(joined, [*params, *also_params])
        row = cursor.fetchone()
    return row[0], also.build(row[1:])


def _record_values(
    *, fingerprint: str, method: str, path: str, credential_id: str, now, response=None
) -> dict:
    """A record's values but its scope and key: in progress (a claim), or completed with
    `response`, the answer to replay."""
    values = {
        "method": method,
        "path": path[:500],
        "request_hash": fingerprint,
        "credential_id": credential_id[:128],
        "status": str(IdempotencyRecord.Status.IN_PROGRESS),
        "response_status": None,
        "response_bytes": None,
        "response_body": None,
        "response_content_type": "",
        "created_at": now,
        "locked_until": now + timedelta(seconds=settings.LOYALTY_IDEMPOTENCY_LOCK_SECONDS),
        "completed_at": None,
        "expires_at": now + timedelta(hours=settings.LOYALTY_IDEMPOTENCY_TTL_HOURS),
    }
    if response is not None:
        values.update(
            status=str(IdempotencyRecord.Status.COMPLETED),
            response_status=response.status_code,
            response_bytes=answer_bytes(response),
            response_content_type=response.content_type or "",
            locked_until=now,
            completed_at=now,
        )
    return values


def idempotency_claim(
    *,
    scope: str,
    key: str,
    fingerprint: str,
    method: str,
    path: str,
    credential_id: str,
    also: RowLookup | None = None,
) -> tuple[IdempotencyRecord, bool]:
    """Claims `key` for this request: (record, False), or (stored record, True) to replay.
    With `also`, the record's `prefetched` is that row (None: no such row), read by the
    claim's own statement.

    Raises IdempotencyKeyReused for another body, IdempotencyInProgress while it runs.
    """
    now = timezone.now()
    fresh = _record_values(
        fingerprint=fingerprint, method=method, path=path, credential_id=credential_id, now=now
    )
    for attempt in range(3):
        # Committed at once (autocommit): the claim is visible to concurrent repeats.
        if also is not None and attempt == 0:
            pk, prefetched = _claim_insert(scope, key, fresh, also)
        else:
            pk, prefetched = _claim_insert(scope, key, fresh), None
        if pk is not None:
            record = IdempotencyRecord(pk=pk, scope=scope, key=key, **fresh)
            record.prefetched = prefetched
            return record, False
        existing = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
        if existing is None:
            continue  # purged meanwhile: claim again
        stale = existing.expires_at <= now or (
            existing.status == IdempotencyRecord.Status.IN_PROGRESS and existing.locked_until <= now
        )
        if stale:
            # Expired, or abandoned by a request that died: take it over, once (conditional
            # UPDATE, so two repeats cannot both win).
            won = IdempotencyRecord.objects.filter(
                pk=existing.pk, status=existing.status, created_at=existing.created_at
            ).update(**fresh)
            if won:
                existing.refresh_from_db()
                return existing, False
            existing.refresh_from_db()
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "This idempotency key was already used for a different request.",
                idempotency_key=key,
            )
        if existing.status == IdempotencyRecord.Status.IN_PROGRESS:
            raise IdempotencyInProgress(idempotency_key=key)
        return existing, True
    raise IdempotencyInProgress(idempotency_key=key)


class KeyRecorded(Exception):
    """A record of the key exists: the claimed path (`idempotency_claim`) answers."""


class KeyGuard:
    """The idempotency of a write that runs as one transaction on PostgreSQL, without a claim
    committed ahead of it: its statement travels with the transaction's first one (see
    `loyalty.api.events.EventsApi.guarded_write`), and the outcome is inserted, completed, by
    the transaction that writes it.

    The claimed path (`idempotent`) spends a round trip and a commit of its own on the claim
    so that a repeat sees the key taken while the first request runs. Here a transaction-level
    advisory lock on the key (`key_lock`) does that: a repeat that cannot take it answers 409
    `idempotency_in_progress`, and so does a claim (the claimed path's INSERT waits for no
    lock and inserts nothing while the key's is held); the lock ends with the transaction, so
    a request that dies leaves nothing behind. The record's unique key stays the arbiter: a
    record committed meanwhile makes the insert fail, and the transaction with it.

    `send` queues the guard's statement (the lock, the key's record if any, the program the
    request names, as `lookup` reads it); `resolve` reads its answer: the program, or
    KeyRecorded (a repeat: the claimed path replays or refuses it), IdempotencyInProgress,
    NotFound. `lock_statement` adds the same conditions and the caller's merchant scope to
    the statement sent with it, so that a request that must not go on locks no row."""

    def __init__(self, *, scope, key, fingerprint, method, path, credential_id, merchant_id):
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.method = method
        self.path = path
        self.credential_id = credential_id
        self.merchant_id = merchant_id
        self.lookup: RowLookup | None = None  # the program's, set by the view
        self.program_pk = None
        self._lock_key = key_lock(scope, key)
        self._cursor = None

    def send(self) -> None:
        table, columns, condition, params = self.lookup.sql()
        qn = connection.ops.quote_name
        # Identifiers come from the models' metadata, values are bound parameters.
        sql = (
            "SELECT pg_try_advisory_xact_lock(%s),"  # noqa: S608
            f" (SELECT r.{qn('id')} FROM {qn(IdempotencyRecord._meta.db_table)} r"
            f"  WHERE r.{qn('scope')} = %s AND r.{qn('key')} = %s), {columns}"
            f" FROM (SELECT 1) AS one LEFT JOIN {table} ON {condition}"
        )
        self._cursor = connection.cursor()
        self._cursor.execute(sql, [self._lock_key, self.scope, self.key, *params])

    def lock_statement(self, sql: str, params: list) -> tuple[str, list]:
        """`sql` (ending in FOR UPDATE OF b, b a row of a program) locking nothing unless this
        request holds the key's lock, the key has no record (a repeat is answered from it,
        without waiting for the member's row) and the program is the caller's."""
        qn = connection.ops.quote_name
        condition = (
            " AND pg_try_advisory_xact_lock(%s)"  # noqa: S608 (the model's table and columns)
            f" AND NOT EXISTS (SELECT 1 FROM {qn(IdempotencyRecord._meta.db_table)} r"
            f"  WHERE r.{qn('scope')} = %s AND r.{qn('key')} = %s)"
        )
        extra = [self._lock_key, self.scope, self.key]
        if self.merchant_id is not None:
            condition += (
                " AND EXISTS (SELECT 1 FROM loyalty_program p"
                " WHERE p.id = b.program_id AND p.merchant_id = %s)"
            )
            extra.append(self.merchant_id)
        head, tail = sql.rsplit(" FOR UPDATE OF b", 1)
        return f"{head}{condition} FOR UPDATE OF b{tail}", [*params, *extra]

    def resolve(self):
        with self._cursor as cursor:
            won, record_id, *program_row = cursor.fetchone()
        if record_id is not None:
            raise KeyRecorded
        if not won:
            raise IdempotencyInProgress(idempotency_key=self.key)
        program = self.lookup.build(program_row)
        if program is None:
            raise NotFound("No such program.", program_id=str(self.program_pk))
        return program

    def refuse(self):
        """The lock statement locked nothing though `resolve` let the request go on: a record
        of the key was committed in between (the lock is this request's, the program its)."""
        raise KeyRecorded

    def record_insert(self, response: Response) -> None:
        """The outcome, in the transaction that wrote it (a plain INSERT: a record of the key
        committed meanwhile fails it)."""
        sql, model_fields = _insert_sql()
        values = {"scope": self.scope, "key": self.key, **self._completed(response)}
        with connection.cursor() as cursor:
            cursor.execute(sql, _params(values, model_fields))

    def record_store(self, response: Response) -> bool:
        """The outcome of a transaction that wrote nothing (a refusal, a replay), committed at
        once; False when a record of the key was committed first (its answer stands)."""
        values = self._completed(response)
        return _claim_insert(self.scope, self.key, values, wait_for_flush=True) is not None

    def _completed(self, response: Response) -> dict:
        return _record_values(
            fingerprint=self.fingerprint,
            method=self.method,
            path=self.path,
            credential_id=self.credential_id,
            now=timezone.now(),
            response=response,
        )


@functools.cache
def _complete_sql() -> str:
    qn = connection.ops.quote_name
    meta = IdempotencyRecord._meta
    column = {name: qn(meta.get_field(name).column) for name in (
        "status", "response_status", "response_bytes", "response_content_type",
        "completed_at", "id", "created_at",
    )}  # fmt: skip
    # Identifiers come from the model's metadata, values are bound parameters.
    return (
        f"UPDATE {qn(meta.db_table)} SET {column['status']} = %s, "  # noqa: S608
        f"{column['response_status']} = %s, {column['response_bytes']} = %s, "
        f"{column['response_content_type']} = %s, {column['completed_at']} = %s "
        f"WHERE {column['id']} = %s AND {column['created_at']} = %s"
    )


def answer_bytes(response: Response) -> bytes:
    """The JSON a response sends, as DRF's JSONRenderer writes it (compact, UTF-8; an answer
    asked for indented is stored compact). A response that carries its encoded JSON
    (loyalty.api.events.EncodedResponse) is not encoded again."""
    encoded = getattr(response, "json_bytes", None)
    return encoded if encoded is not None else JSONRenderer().render(response.data)


def idempotency_complete(record: IdempotencyRecord, response: Response) -> None:
    """Stores the outcome to replay: in the caller's transaction when there is one (a view
    may store it with its own write, see `idempotent`), else committed at once."""
    body = answer_bytes(response)
    status = IdempotencyRecord.Status.COMPLETED
    if connection.vendor != "postgresql":
        IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).update(
            status=status,
            response_status=response.status_code,
            response_bytes=body,
            response_content_type=response.content_type or "",
            completed_at=timezone.now(),
        )
        return
    params = [
        str(status),
        response.status_code,
        body,
        response.content_type or "",
        timezone.now(),
        record.pk,
        record.created_at,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_complete_sql(), params)


def idempotency_release(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(
        pk=record.pk, created_at=record.created_at, status=IdempotencyRecord.Status.IN_PROGRESS
    ).delete()


def replay_response(record: IdempotencyRecord) -> HttpResponse:
    """The stored answer, its bytes as they were first sent (a record stored as JSON before
    access/0006: as DRF's renderer writes that JSON, which is what its replay sent then)."""
    if record.response_bytes is not None:
        body = bytes(record.response_bytes)
    else:
        body = JSONRenderer().render(record.response_body)
    response = HttpResponse(body, status=record.response_status, headers=replay_headers(True))
    if body:  # as DRF's Response: no Content-Type for an empty body
        # An empty stored type is DRF's default for the API's one renderer.
        response["Content-Type"] = record.response_content_type or JSONRenderer.media_type
    else:
        del response["Content-Type"]
    return response


def idempotent(handler):
    """Wraps a write handler of an APIView (after authentication and permission checks).

    A view may name a row its handler will read (`idempotency_prefetch(request)` returning a
    RowLookup, or None): the claim's statement reads it too, handed over as
    `request.idempotency_record.prefetched`; the handler checks it is the row it needs.

    On PostgreSQL a view may first answer without a claim (`guarded_write(request, guard)`,
    keeping the key with a KeyGuard), or return None to leave the request to the claim.

    A view with `idempotency_per_person = True` keeps keys per person rather than per
    merchant: its write is a person's own act (an approval decision), which another person's
    request under the same key must not replay. A view with `idempotency_atomic = True` has
    its write and its answer's record committed together (`_with_record`)."""

    @functools.wraps(handler)
    def wrapper(self, request, *args, **kwargs):
        key = idempotency_key(request)
        request.idempotency_key = key
        caller = request.caller
        per_person = getattr(self, "idempotency_per_person", False)
        asked = {
            "scope": caller.person_idempotency_scope if per_person else caller.idempotency_scope,
            "key": key,
            "fingerprint": request_fingerprint(request),
            "method": request.method,
            "path": request.path,
            "credential_id": caller.credential_id,
        }
        guarded = getattr(self, "guarded_write", None)
        if guarded is not None and connection.vendor == "postgresql":
            response = guarded(request, KeyGuard(**asked, merchant_id=caller.merchant_id))
            if response is not None:
                return response
        prefetch = getattr(self, "idempotency_prefetch", None)
        record, replay = idempotency_claim(
            **asked, also=prefetch(request) if prefetch is not None else None
        )
        if replay:
            _replay_permitted(self, request, record)
            return replay_response(record)
        # A handler may store its outcome itself, in the transaction of its write
        # (`idempotency_complete` there, then `record.stored = True` once committed).
        request.idempotency_record = record
        try:
            try:
                if getattr(self, "idempotency_atomic", False):
                    response = _with_record(handler, self, request, record, args, kwargs)
                else:
                    response = handler(self, request, *args, **kwargs)
            except Exception as exc:
                # Rendered here (not by dispatch) so a refusal's problem body can be stored;
                # unknown exceptions re-raise from handle_exception.
                response = self.handle_exception(exc)
        except BaseException:
            idempotency_release(record)
            raise
        if getattr(record, "stored", False):
            pass
        elif 200 <= response.status_code < 300 or response.status_code in STORED_STATUSES:
            idempotency_complete(record, response)
        else:
            idempotency_release(record)
        return response

    wrapper.idempotent = True
    return wrapper


def _with_record(handler, view, request, record: IdempotencyRecord, args, kwargs):
    """The handler of a view with `idempotency_atomic = True`, its write and its success's
    record committed together: a create with no key of its own in the ledger (a program, a
    campaign), which a process that died between two commits would leave made but unrecorded,
    for a retry to take over the claim and make again. Its services' transactions are then
    savepoints of this one."""
    with transaction.atomic():
        response = handler(view, request, *args, **kwargs)
        succeeded = 200 <= response.status_code < 300
        if succeeded:
            idempotency_complete(record, response)
    record.stored = succeeded  # committed with the write
    return response


def _replay_permitted(view, request, record: IdempotencyRecord) -> None:
    """A stored answer is replayed only to a caller who may make the request. DRF checked the
    endpoint's permission before; a view whose handler checks finer ones on the body (a
    manual_adjust event needs members:adjust) names them in `replay_permissions(request,
    record)`, checked here on the repeat's body, the first request's (same fingerprint): a
    caller of the merchant without them gets 403, not the answer another credential's
    request got."""
    needed = getattr(view, "replay_permissions", None)
    if needed is None:
        return
    missing = sorted(p for p in needed(request, record) if not request.caller.has(p))
    if missing:
        raise PermissionMissing(
            f"This request needs the {missing[0]} permission.", permission=missing[0]
        )


def stored_answer(record: IdempotencyRecord):
    """The stored answer's JSON, parsed (a view deciding who may have it replayed)."""
    if record.response_bytes is not None:
        return orjson.loads(bytes(record.response_bytes))
    return record.response_body


def idempotency_records_purge(*, chunk: int = 5000, max_chunks: int = 200) -> int:
    """Deletes expired records in chunks (short statements, no long lock); returns how many.
    Run hourly by beat (`access.idempotency_purge`); an expired record is never replayed
    anyway, so a late purge only costs space."""
    deleted = 0
    for _ in range(max_chunks):
        ids = list(
            IdempotencyRecord.objects.filter(expires_at__lte=timezone.now())
            .order_by("expires_at")
            .values_list("pk", flat=True)[:chunk]
        )
        if not ids:
            break
        deleted += IdempotencyRecord.objects.filter(pk__in=ids).delete()[0]
    return deleted
