"""Who does a write: recorded on ledger entries and in the audit trail."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    id: str
    role: str
    ip: str | None = None
    user_agent: str | None = None
    merchant_id: str | None = None
    credential_id: str | None = None


SYSTEM = Actor(id="system", role="system")


def system_actor(job: str) -> Actor:
    """The actor of a background job: role `system`, id naming the job."""
    return Actor(id=f"system:{job}", role="system")
