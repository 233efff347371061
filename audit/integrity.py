"""Tamper evidence: the keyed digest of one entry and the chained digest of a seal.

The key (`AUDIT_HMAC_KEY`) lives in the environment, not in the database, so someone who
can write to the database (even disabling the append-only trigger) cannot forge a digest.
"""

import functools
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings

GENESIS = "0" * 64


def audit_key() -> bytes:
    return _audit_key(getattr(settings, "AUDIT_HMAC_KEY", ""), settings.SECRET_KEY)


@functools.lru_cache(maxsize=8)  # every audited write asks: keyed by the settings themselves
def _audit_key(configured: str, secret_key: str) -> bytes:
    if configured:
        return configured.encode()
    # Development fallback: derived from SECRET_KEY (production requires SECRET_KEY anyway).
    return hmac.new(secret_key.encode(), b"audit-hmac-v1", hashlib.sha256).digest()


def normalise_ip(ip: str | None) -> str | None:
    """The canonical text of an IP address (PostgreSQL's inet rewrites IPv6), None if invalid."""
    if not ip:
        return None
    return _normalise_ip_text(str(ip))


# Every audited write asks (twice: the column and the digest), mostly for the same few
# addresses (a merchant's servers); parsing one costs ~3 us.
@functools.lru_cache(maxsize=4096)
def _normalise_ip_text(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip.split("%")[0]))
    except ValueError:
        return None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_json_string = json.encoder.encode_basestring  # canonical_json of a text (ensure_ascii off)


def scrubbed_json(document: dict) -> str:
    """`canonical_json` of a `pii_scrub` output (texts, None, bools, ints, lists and dicts
    with text keys: no float, which orjson would write differently), by orjson: the same text
    (tests/audit/test_scrubbed_json.py) for a tenth of the CPU, on every audited write. What
    orjson refuses (an int past 64 bits, a lone surrogate) goes through json itself."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return canonical_json(document)


def entry_digest(
    *,
    entity_type: str,
    entity_id: str,
    action: str,
    merchant_id: str,
    actor_id: str,
    actor_role: str,
    ip: str | None,
    user_agent: str,
    changes: dict,
    created_at: datetime,
    credential_id: str = "",
    key: bytes | None = None,
) -> str:
    """The entry's HMAC; `key` defaults to `audit_key()` (a caller that has it passes it)."""
    digest = entry_digester(
        entity_type=entity_type,
        action=action,
        merchant_id=merchant_id,
        actor_id=actor_id,
        actor_role=actor_role,
        ip=ip,
        user_agent=user_agent,
        created_at=created_at,
        credential_id=credential_id,
        key=key,
    )
    return digest(entity_id, canonical_json(changes))


def entry_digester(
    *,
    entity_type: str,
    action: str,
    merchant_id: str,
    actor_id: str,
    actor_role: str,
    ip: str | None,
    user_agent: str,
    created_at: datetime,
    credential_id: str = "",
    key: bytes | None = None,
) -> Callable[[str, str], str]:
    """`digest(entity_id, changes_json)` for entries that share everything else (a batch
    writes 1,000 of them): what they share is encoded once.

    The digest is the HMAC of canonical_json(["v1", entity type, entity id, action, merchant,
    actor, role, ip, user agent, changes, microseconds since the epoch]); "v2" appends the
    credential id when there is one, so entries written before that column still verify. A
    list's canonical JSON is its items' canonical JSON joined by "," in brackets, which is
    what lets the shared parts be encoded apart from the entity id and the changes.
    """
    head, middle, credential = _shared_parts(
        entity_type, action, merchant_id, actor_id, actor_role, ip, user_agent, credential_id
    )
    # Microseconds since the epoch: independent of time zone and text formatting.
    tail = f",{round(created_at.timestamp() * 1_000_000)}{credential}]"
    # The key's HMAC state is set up once and copied per entry (2.0 -> 1.6 us an entry).
    keyed = hmac.new(key or audit_key(), digestmod=hashlib.sha256)

    def digest(entity_id: str, changes_json: str) -> str:
        # A text's canonical JSON is json's string encoder's output (1.5 us by json.dumps).
        message = f"{head}{_json_string(entity_id)}{middle}{changes_json}{tail}"
        mac = keyed.copy()
        mac.update(message.encode())
        return mac.hexdigest()

    return digest


# Every audited write encodes these, and one caller (a merchant's server, a job) writes many
# entries with the same ones: encoded once per distinct set.
@functools.lru_cache(maxsize=1024)
def _shared_parts(
    entity_type: str,
    action: str,
    merchant_id: str,
    actor_id: str,
    actor_role: str,
    ip: str | None,
    user_agent: str,
    credential_id: str,
) -> tuple[str, str, str]:
    """The canonical JSON around the entity id and the changes: (head, middle, credential)."""
    version = "v2" if credential_id else "v1"
    shared = (action, merchant_id, actor_id, actor_role, normalise_ip(ip), user_agent)
    head = f"[{canonical_json(version)},{canonical_json(entity_type)},"
    middle = "," + ",".join(canonical_json(value) for value in shared) + ","
    credential = f",{canonical_json(credential_id)}" if credential_id else ""
    return head, middle, credential


def entry_digest_of(entry) -> str:
    """Recomputes the digest of a stored entry from its content."""
    return entry_digest(
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        action=entry.action,
        merchant_id=entry.merchant_id,
        actor_id=entry.actor_id,
        actor_role=entry.actor_role,
        ip=entry.ip,
        user_agent=entry.user_agent,
        changes=entry.changes,
        created_at=entry.created_at,
        # Absent from the historical model of migrations before 0004.
        credential_id=getattr(entry, "credential_id", ""),
    )


def seal_digest(
    *, prev_digest: str, basis: str, lo: int, hi: int, entries: Iterable[tuple[int, str]]
) -> tuple[str, int]:
    """Chains the previous seal with the (id, digest) of every entry in the range, in id
    order. Returns the digest and the number of entries."""
    mac = hmac.new(audit_key(), f"seal-v1|{prev_digest}|{basis}|{lo}|{hi}".encode(), "sha256")
    count = 0
    for entry_id, digest in entries:
        mac.update(f"|{entry_id}:{digest}".encode())
        count += 1
    mac.update(f"|count:{count}".encode())
    return mac.hexdigest(), count
