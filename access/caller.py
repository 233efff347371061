"""Who is calling the API: the verified credential's actor, roles, permissions and scope."""

import hashlib
import ipaddress
from dataclasses import dataclass

from django.conf import settings

from loyalty.actors import Actor


@dataclass(frozen=True, slots=True)
class Caller:
    """Put on `request.caller` by the authentication classes; the audit trail reads `actor`.

    `merchant_id` is the scope: a caller bound to a merchant sees only that merchant's
    objects (others answer 404); None is platform staff, who see every merchant.
    """

    actor: Actor
    roles: tuple[str, ...]
    permissions: frozenset[str]
    merchant_id: str | None
    credential_type: str  # "jwt" | "api_key"
    credential_id: str

    # DRF's IsAuthenticated and request.user checks read this.
    is_authenticated = True

    @property
    def role(self) -> str:
        return self.actor.role

    @property
    def idempotency_scope(self) -> str:
        """Idempotency keys are unique per merchant scope, or per person for platform staff."""
        if self.merchant_id is not None:
            return f"merchant:{self.merchant_id}"
        return f"{self.credential_type}:{self.actor.id}"

    @property
    def person_idempotency_scope(self) -> str:
        """The scope of a write that only its own person may repeat (an approval decision):
        two people of one merchant sending the same key must each be heard. Within the
        merchant's scope (one person's token for another merchant must not replay this
        one's answers); the person hashed, to fit the column (150)."""
        if self.merchant_id is None:
            return self.idempotency_scope  # platform staff: already per person
        person = f"{self.credential_type}:{self.actor.id}".encode()
        return f"{self.idempotency_scope}|p:{hashlib.sha256(person).hexdigest()[:32]}"

    def can_see(self, merchant_id: str) -> bool:
        return self.merchant_id is None or self.merchant_id == merchant_id

    def has(self, permission: str) -> bool:
        return permission in self.permissions


def client_ip(request) -> str | None:
    """The client address: REMOTE_ADDR, or the entry `LOYALTY_API_NUM_PROXIES` hops from the
    right of X-Forwarded-For when behind that many trusted proxies (a client can forge the
    left part of the header, never the part our own proxies appended)."""
    meta = request.META
    address = meta.get("REMOTE_ADDR")
    proxies = getattr(settings, "LOYALTY_API_NUM_PROXIES", 0)
    forwarded = meta.get("HTTP_X_FORWARDED_FOR")
    if proxies and forwarded:
        hops = [part.strip() for part in forwarded.split(",")]
        address = hops[-min(proxies, len(hops))]
    try:
        return str(ipaddress.ip_address(address)) if address else None
    except ValueError:
        return None


def user_agent(request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:400]
