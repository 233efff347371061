"""POST /events and /events/batch: merchant events, exactly once per idempotency key."""

import dataclasses
import functools
import json
import re
import uuid
from decimal import Decimal

import orjson
from django.db import IntegrityError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from access.approval_gate import approval_gate, approval_needed, approval_pending_body
from access.idempotency import (
    HEADER,
    KEY_PATTERN,
    KEY_RULE,
    STORED_STATUSES,
    IdempotencyInProgress,
    KeyRecorded,
    idempotency_complete,
    idempotent,
    replay_headers,
    stored_answer,
)
from access.problems import problem
from access.schema import IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import program_get_for_caller, program_lookup, scope_queryset
from approvals.models import ApprovalRequest
from approvals.registry import adjustment_event
from loyalty_project.collector import with_collector_paused

from ..errors import (
    DomainError,
    NotFound,
    PermissionMissing,
    ValidationFailed,
)
from ..models import Program
from ..services import EventInput
from ..services.batch import MAX_BATCH, events_ingest_batch
from ..services.budget import BudgetRetry
from ..services.ingestion import (
    EVENT_TYPES,
    event_ingest,
    event_ingest_prefaced,
    event_validate,
    ingest_prefaceable,
    stored_entry_id,
)
from ..services.ingestion.key_holds import key_held, key_holder
from . import fields as f
from .base import LoyaltyApi
from .serializers import (
    ApprovalPendingSerializer,
    BatchInputSerializer,
    BatchResultSerializer,
    EventInputSerializer,
    IngestResultSerializer,
)

CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
# An event's key is its ledger key. The engine keys its own entries with these prefixes
# (`POST .../adjustments`, campaign awards, expiry, redemption captures): an event may not
# take one, or it would answer (or block) the engine's entry of that key.
ADJUSTMENT_KEY_PREFIX = "adjustment:"
RESERVED_KEY_PREFIXES = (ADJUSTMENT_KEY_PREFIX, "campaign:", "expiry:", "redemption:")
RESERVED_KEY_RULE = (
    f"Keys starting with {', '.join(RESERVED_KEY_PREFIXES)} are reserved for the engine's own "
    "ledger entries."
)


def event_parse(data, *, idempotency_key: str | None = None) -> tuple[uuid.UUID, EventInput]:
    """(program id, event) from one JSON event, or ValidationFailed with per-field errors.

    Hand-written rather than a DRF serializer: the batch path parses 1,000 of these per
    request. EventInputSerializer documents the same fields for the schema.
    """
    if not isinstance(data, dict):
        raise ValidationFailed(
            "An event is a JSON object.",
            errors={"non_field_errors": ["A JSON object is required."]},
        )
    errors: dict[str, list[str]] = {}
    values: dict = {}
    for name, parse, required in _EVENT_FIELDS:
        raw = data.get(name)
        if raw is None:
            if required:
                errors[name] = ["This field is required."]
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            errors[name] = [str(exc)]
    if idempotency_key is None:
        raw_key = data.get("idempotency_key")
        if not isinstance(raw_key, str) or not KEY_PATTERN.fullmatch(raw_key):
            errors["idempotency_key"] = [KEY_RULE]
        elif raw_key.startswith(RESERVED_KEY_PREFIXES):
            errors["idempotency_key"] = [RESERVED_KEY_RULE]
        idempotency_key = raw_key
    elif idempotency_key.startswith(RESERVED_KEY_PREFIXES):
        errors[HEADER] = [RESERVED_KEY_RULE]
    if errors:
        raise ValidationFailed("The event is invalid.", errors=errors)
    program_id = values.pop("program_id")
    values["idempotency_key"] = idempotency_key
    return program_id, _event_new(values)


# EventInput's defaults but `metadata`'s (a new dict each time), for `_event_new`.
_EVENT_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(EventInput)
    if field.default is not dataclasses.MISSING
}


def _event_new(values: dict) -> EventInput:
    """`EventInput(**values)`, for values event_parse checked, without the frozen dataclass's
    __init__, which sets its twelve fields one by one through object.__setattr__ (2.3 us,
    0.5 so)."""
    event = object.__new__(EventInput)
    fields = event.__dict__
    fields.update(_EVENT_DEFAULTS)
    fields["metadata"] = {}
    fields.update(values)
    return event


# A batch names a few programs 1,000 times: each text is parsed once (~1 us saved an item).
@functools.lru_cache(maxsize=1024)
def _program_id(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def _uuid(value) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError("A UUID string is required.")
    return _program_id(value)


def _event_type(value):
    if not isinstance(value, str) or value not in EVENT_TYPES:
        raise ValueError(f"One of {sorted(EVENT_TYPES)}.")
    return value


def _decimal(value) -> Decimal:
    """`f.parse_decimal`, with a short way for what most events send: whole units in at most
    18 ASCII digits, which it would turn into the same two-place Decimal (~2.5 us saved)."""
    if type(value) is str and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return Decimal(value + ".00")
    return f.parse_decimal(value)


def _text(max_length: int, pattern=None, *, required: bool = False):
    """`f.parse_text` with these arguments. A text of 1 to `max_length` printable characters
    (that `pattern` matches) is what it returns as it is: one regex match accepts most values
    (the five text fields of an event: 3.2 -> 1.6 us); any other gets parse_text's answer."""
    printable = re.compile(rf"[^\x00-\x1f\x7f]{{1,{max_length}}}")
    slow = functools.partial(
        f.parse_text, max_length=max_length, pattern=pattern, required=required
    )

    def parse(value):
        if (
            type(value) is str
            and printable.fullmatch(value)
            and (pattern is None or pattern.match(value))
        ):
            return value
        return slow(value)

    return parse


# (name, parser, required), in the order their errors are listed.
_EVENT_FIELDS = (
    ("program_id", _uuid, True),
    ("member_id", _text(128, f.MEMBER_ID_PATTERN, required=True), True),
    ("type", _event_type, True),
    ("amount", _decimal, False),
    ("points", _decimal, False),
    ("currency", _text(3, CURRENCY_PATTERN, required=True), False),
    ("reason", _text(500), False),
    ("module", _text(32), False),
    ("reference", _text(128), False),
    ("original_reference", _text(128), False),
    ("occurred_at", f.parse_aware_datetime, False),
    ("metadata", f.parse_json_object, False),
)


def ingest_body(result, formatted: dict | None = None) -> dict:
    """The service's answer, with its time in the API's UTC `Z` form like every other time.
    `formatted` (time -> its text) lets a batch, whose entries share their time, format it
    once."""
    body = result.as_dict()
    at = result.entry.created_at
    text = None if formatted is None else formatted.get(at)
    if text is None:
        text = f.iso(at)
        if formatted is not None:
            formatted[at] = text
    body["created_at"] = text
    return body


def adjustment_gate(*, program: Program, event: EventInput, caller):
    """The permission and approval gate of a manual_adjust event (every path: events, batch,
    adjustments). `events:write`, which a checkout integration holds, does not let it adjust
    balances: that takes `members:adjust`, as `POST .../adjustments` does.

    An adjustment whose key already wrote an entry (one executed through approval, sent
    again) opens no new approval request: it goes on to the ingestion, which answers it from
    that entry (its replay, or `idempotency_key_reused` for another body) and writes nothing.
    """
    if not _adjustment_permitted(event, caller):
        return None
    # What the service would refuse (a suspended program, another currency, ...) is refused
    # now: no approval request for an adjustment that could never run.
    event_validate(program, event)
    return approval_gate(
        operation="balance_adjustment",
        program=program,
        target=f"balance:{program.pk}:{event.member_id}",
        amount=event.points,
        actor=caller.actor,
        payload={
            "program_id": str(program.pk),
            "member_id": event.member_id,
            "points": str(event.points),
            "reason": event.reason,
            "idempotency_key": event.idempotency_key,
            # The rest of the event as sent, so that the approved entry is that event: its
            # reference is in the key's fingerprint (a resend is then a replay, not a reuse).
            **adjustment_extras(event),
        },
        done=lambda: stored_entry_id(program, event.idempotency_key) is not None,
        pending=lambda: _pending_resend(program, event),
    )


def _pending_resend(program: Program, event: EventInput):
    """The pending request holding a gated adjustment's key, if any: the same event sent
    again (a batch retried under a new request key, or sent on another path) is answered by
    that request, its first answer (202), where the gate would refuse a second request for
    the member (409 approval_pending_exists); another event with the key is refused
    (`idempotency_key_reused`), as the service refuses any event with a held key. Marked
    `resent` for the answer's replay flag."""
    holder = key_holder(program.pk, event.idempotency_key)
    if holder is None:
        return None
    request = ApprovalRequest.objects.get(pk=holder)
    if adjustment_event(request.payload).fingerprint() != event.fingerprint():
        raise key_held(holder, event.idempotency_key)
    request.resent = True
    return request


def _pending_item(index: int, pending) -> dict:
    """A batch item's answer when an approval request answers it (202)."""
    item = {"index": index, "status": 202, "body": approval_pending_body(pending)}
    if getattr(pending, "resent", False):
        item["replayed"] = True
    return item


def adjustment_extras(event: EventInput) -> dict:
    """The optional fields of an adjustment the event sets, JSON-safe (approvals.registry
    reads them back)."""
    extras = {
        "amount": None if event.amount is None else str(event.amount),
        "currency": event.currency,
        "reference": event.reference,
        "original_reference": event.original_reference,
        "module": event.module,
        "occurred_at": None if event.occurred_at is None else event.occurred_at.isoformat(),
        "metadata": event.metadata or None,
    }
    return {name: value for name, value in extras.items() if value}


def _adjustment_permitted(event: EventInput, caller) -> bool:
    """Whether the event is a manual_adjust (False: not one); PermissionMissing for a
    caller who may not adjust balances."""
    if event.type != "manual_adjust":
        return False
    if not caller.has("members:adjust"):
        raise PermissionMissing(
            "A manual_adjust event needs the members:adjust permission.",
            permission="members:adjust",
        )
    return True


def _is_adjustment(raw) -> bool:
    """A raw event (the body, or a batch item) that `_adjustment_permitted` checks."""
    return isinstance(raw, dict) and raw.get("type") == "manual_adjust"


def _created(result) -> Response:
    # Encoded once, for the response and the stored answer.
    return EncodedResponse(ingest_body(result), status=201, headers=replay_headers(result.replayed))


def event_ingest_stored(*, program: Program, event: EventInput, actor, record) -> Response:
    """`event_ingest`, with the request's idempotency outcome stored in the transaction that
    writes the event: one commit (one WAL flush) per request instead of two, and no moment
    where the event is written but its key still shows "in progress". A replay writes nothing
    and its answer is stored by `idempotent` as any other."""
    written: list[Response] = []

    def store(result) -> None:
        response = _created(result)
        idempotency_complete(record, response)
        written.append(response)

    result = event_ingest(program=program, event=event, actor=actor, in_transaction=store)
    if result.replayed:
        return _created(result)
    record.stored = True  # committed with the event
    return written[-1]  # the try that committed (a BudgetRetry may have rolled one back)


class EventsApi(LoyaltyApi):
    method_permissions = {"post": "events:write"}

    @staticmethod
    def replay_permissions(request, record) -> set[str]:
        # (A manual_adjust refused for the permission is a 403, never stored.)
        return {"members:adjust"} if _is_adjustment(request.data) else set()

    def guarded_write(self, request, guard) -> Response | None:
        """An earning on PostgreSQL, the common case, as one transaction in two round trips:
        the key's guard and the program go with the balance lock (`KeyGuard`,
        `event_ingest_prefaced`), and the answer is inserted with the event: a round trip,
        a commit and the record's UPDATE fewer than the claimed path (`post`, after
        `idempotent`'s claim), 15-26 % of a request's CPU alone, 3.6-5.6 % with another
        server beside it (docs/BENCHMARKS.md). None: that path
        answers (another event type, a body it refuses, a repeat of the key, a budget no
        single shard can pay, a record of the key committed meanwhile)."""
        try:
            program_id, event = event_parse(request.data, idempotency_key=guard.key)
        except DomainError:
            return None
        if not ingest_prefaceable(event):
            return None
        guard.program_pk = program_id
        guard.lookup = program_lookup(request.caller, program_id)
        written: list[Response] = []

        def store(result) -> None:
            response = _created(result)
            guard.record_insert(response)
            written.append(response)

        try:
            result = event_ingest_prefaced(
                preface=guard, event=event, actor=request.caller.actor, in_transaction=store
            )
        except (KeyRecorded, BudgetRetry, IntegrityError):
            return None
        except IdempotencyInProgress as exc:
            return self.handle_exception(exc)  # the running request's key: nothing to store
        except Exception as exc:
            response = self.handle_exception(exc)  # a refusal; unknown errors re-raise
        else:
            if not result.replayed:
                return written[-1]  # committed with its answer
            response = _created(result)
        storable = 200 <= response.status_code < 300 or response.status_code in STORED_STATUSES
        if storable and not guard.record_store(response):
            return None  # a record committed first: its answer stands
        return response

    def idempotency_prefetch(self, request):
        """The event's program, read by the idempotency claim's own statement."""
        data = request.data
        raw = data.get("program_id") if isinstance(data, dict) else None
        if not isinstance(raw, str):
            return None
        try:
            return program_lookup(request.caller, _program_id(raw))  # parsed once per text
        except ValueError:
            return None  # event_parse answers it

    @extend_schema(
        operation_id="events_create",
        summary="Ingest one event (purchase, refund, referral, campaign_bonus, manual_adjust)",
        description="The `Idempotency-Key` header is also the event's idempotency key: a "
        "repeat never awards twice.",
        parameters=[IDEMPOTENCY_KEY],
        request=EventInputSerializer,
        responses={
            201: IngestResultSerializer,
            202: OpenApiResponse(ApprovalPendingSerializer, "Waiting for approval."),
            **WRITE_ERRORS,
        },
    )
    @idempotent
    def post(self, request):
        caller = request.caller
        program_id, event = event_parse(request.data, idempotency_key=request.idempotency_key)
        program = program_get_for_caller(
            caller=caller,
            program_id=program_id,
            prefetched=getattr(request.idempotency_record, "prefetched", None),
        )
        pending = adjustment_gate(program=program, event=event, caller=caller)
        if pending is not None:
            resent = getattr(pending, "resent", False)
            return Response(
                approval_pending_body(pending), status=202, headers=replay_headers(resent)
            )
        return event_ingest_stored(
            program=program, event=event, actor=caller.actor, record=request.idempotency_record
        )


class EventsBatchApi(LoyaltyApi):
    method_permissions = {"post": "events:write"}
    max_body_setting = "LOYALTY_API_MAX_BODY_BYTES"  # up to 1,000 events

    @staticmethod
    def replay_permissions(request, record) -> set[str]:
        """members:adjust when an adjustment of the batch got past the permission check (the
        first caller held it): its outcome is in the answer. A batch whose adjustments were
        all refused on their line (403, or 400/404 before the check) replays to any caller
        of the merchant, the one who sent it included."""
        data = request.data
        raw = data.get("events") if isinstance(data, dict) else None
        adjustments = {
            index for index, item in enumerate(raw if isinstance(raw, list) else [])
            if _is_adjustment(item)
        }  # fmt: skip
        if not adjustments:
            return set()
        answer = stored_answer(record)
        results = answer.get("results") if isinstance(answer, dict) else None
        past_the_check = any(
            isinstance(item, dict)
            and item.get("index") in adjustments
            and item.get("status") not in (400, 403, 404)
            for item in (results if isinstance(results, list) else [])
        )
        return {"members:adjust"} if past_the_check else set()

    @extend_schema(
        operation_id="events_batch",
        summary=f"Ingest up to {MAX_BATCH} events, each atomic on its own",
        description="Each item carries its own `idempotency_key`; the answer lists, in order, "
        "each item's status and body (201) or problem (`error`).",
        parameters=[IDEMPOTENCY_KEY],
        request=BatchInputSerializer,
        responses={200: BatchResultSerializer, **WRITE_ERRORS},
    )
    @with_collector_paused  # from the body's parsing (the claim's fingerprint) to the answer
    @idempotent
    def post(self, request):
        caller = request.caller
        raw = request.data.get("events") if isinstance(request.data, dict) else None
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BATCH:
            raise ValidationFailed(errors={"events": [f"A list of 1 to {MAX_BATCH} events."]})
        # The envelope holds `events` only, as StrictInput bodies hold their own fields (a
        # misspelled option must not pass unnoticed); an event's own extra members are
        # ignored, as `POST /events` ignores them.
        unknown = [name for name in request.data if name != "events"]
        if unknown:
            raise ValidationFailed(
                errors={str(name): ["Not a field of this request."] for name in unknown}
            )
        results: list[dict | None] = [None] * len(raw)
        parsed: list[tuple[int, uuid.UUID, EventInput]] = []
        for index, item in enumerate(raw):
            try:
                program_id, event = event_parse(item)
            except DomainError as error:
                results[index] = _error_item(index, error)
            else:
                parsed.append((index, program_id, event))
        # Keyed by the id's int: a UUID's hash is Python code (~0.25 us), an int's is C.
        wanted = {program_id.int: program_id for _, program_id, _ in parsed}
        programs = {
            p.pk.int: p
            for p in scope_queryset(Program.objects.all(), caller).filter(
                pk__in=list(wanted.values())
            )
        }
        # Each item answers what POST /events would, one by one in order: the gate and the
        # service each answer from what is stored (a key's entry, or the pending request
        # holding it). A gated adjustment's gate must see what the items before it did with
        # its key, so those gathered for the service go first when one of them carries it.
        service = _ServiceQueue(caller.actor)
        created: dict = {}  # a batch's entries share their time: its wire text once
        for index, program_id, event in parsed:
            program = programs.get(program_id.int)
            try:
                if program is None:
                    raise NotFound("No such program.", program_id=str(program_id))
                if event.type == "manual_adjust" and approval_needed(
                    "balance_adjustment", event.points
                ):
                    service.send_if_carrying((program_id.int, event.idempotency_key))
                pending = adjustment_gate(program=program, event=event, caller=caller)
            except DomainError as error:
                results[index] = _error_item(index, error)
                continue
            if pending is not None:
                results[index] = _pending_item(index, pending)
            else:
                service.add(index, program, event)
        service.send()
        for (index, _, _), outcome in zip(service.items, service.outcomes, strict=True):
            results[index] = _ingested_item(index, outcome, created)
        return EncodedResponse({"results": results}, status=200)


class EncodedResponse(Response):
    """A JSON answer encoded once, by orjson, for the response and for its idempotent record
    (`json_bytes`, read by `idempotency_complete`): DRF's renderer and the record would each
    run json.dumps over the batch's 1,000 items, ~8 us an item each. The same JSON as DRF's
    JSONRenderer gives (compact, UTF-8, U+2028/U+2029 escaped, DRF's encoder for what orjson
    leaves to it); any other rendering asked for (an indent) goes through DRF."""

    def __init__(self, data, **kwargs) -> None:
        super().__init__(data, **kwargs)
        self.json_bytes = _json_bytes(data)

    @property
    def rendered_content(self):
        renderer = getattr(self, "accepted_renderer", None)
        if type(renderer) is not JSONRenderer or self.accepted_media_type != renderer.media_type:
            return super().rendered_content
        self["Content-Type"] = self.content_type or renderer.media_type  # JSON has no charset
        return self.json_bytes


_drf_default = JSONEncoder().default


def _json_bytes(data) -> bytes:
    try:
        # Datetimes as DRF writes them ("Z" for UTC); everything else orjson writes as
        # json.dumps does, or hands to DRF's encoder.
        encoded = orjson.dumps(data, default=_drf_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:  # integers past 64 bits, keys that are not text: json's rules
        encoded = json.dumps(
            data, cls=JSONEncoder, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()
    # As DRF's renderer: JSON that is also a strict JavaScript subset.
    return encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")


def _ingested_item(index: int, outcome, created: dict) -> dict:
    if isinstance(outcome, DomainError):
        return _error_item(index, outcome)
    return {
        "index": index,
        "status": 201,
        "replayed": outcome.replayed,
        "body": ingest_body(outcome, created),
    }


class _LastOfKey:
    """{(program key, idempotency key): the place in `items` of its last item}, indexed only
    when asked: only a gated adjustment asks, so a batch of earnings pays nothing for it."""

    def __init__(self, items: list) -> None:
        self.items = items
        self.places: dict[tuple, int] = {}
        self.indexed = 0

    def get(self, key: tuple) -> int | None:
        items, places = self.items, self.places
        for place in range(self.indexed, len(items)):
            _, program, event = items[place]
            places[(program.pk.int, event.idempotency_key)] = place
        self.indexed = len(items)
        return places.get(key)


class _ServiceQueue:
    """A batch's items for the service, in item order, sent in as few calls as the batch
    allows: all at once, unless a gated adjustment's key is among those gathered, which then
    go first (`send_if_carrying`)."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self.items: list[tuple[int, Program, EventInput]] = []  # (index, program, event)
        self.outcomes: list = []  # the service's, for items[: len(outcomes)]
        self.last_of_key = _LastOfKey(self.items)

    def add(self, index: int, program: Program, event: EventInput) -> None:
        self.items.append((index, program, event))

    def send_if_carrying(self, key: tuple) -> None:
        """Sends what was gathered if an item of it not yet sent carries `key`."""
        last = self.last_of_key.get(key)
        if last is not None and last >= len(self.outcomes):
            self.send()

    def send(self) -> None:
        unsent = self.items[len(self.outcomes) :]
        if unsent:
            self.outcomes += events_ingest_batch(
                items=[(program, event) for _, program, event in unsent], actor=self.actor
            )


def _error_item(index: int, error: DomainError) -> dict:
    status = 400 if isinstance(error, ValidationFailed) else error.http_status
    return {
        "index": index,
        "status": status,
        "error": problem(
            status_code=status,
            code=error.code,
            title=error.title,
            detail=error.detail,
            errors=getattr(error, "errors", None) or None,
            extra=error.context,
        ),
    }
