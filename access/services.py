"""Writes of the access app that are not part of a request's handling: staff identities and
merchant API keys. Each is audited in its own transaction."""

import re
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.services import audit_record
from loyalty.actors import Actor
from loyalty.errors import ValidationFailed
from loyalty.models import MERCHANT_ID_PATTERN, Merchant

from .models import MerchantAPIKey, StaffIdentity

# What may change on an existing key. Its merchant never does (a key is bound to one merchant;
# give another merchant a new key), nor its secret.
API_KEY_UPDATABLE = frozenset({"name", "permissions", "expiry_date", "revoked"})


@transaction.atomic(durable=True)
def staff_identity_link(*, user_id: int, molam_subject: str, actor: Actor) -> StaffIdentity:
    """Links a staff user to their Molam ID subject, once and for good (one subject per user,
    one user per subject); nobody links themselves. Audited."""
    if actor.id == f"user:{user_id}":
        raise ValidationFailed(errors={"user": ["Nobody links their own account."]})
    identity = StaffIdentity(user_id=user_id, molam_subject=molam_subject)
    try:
        identity.full_clean(exclude=["created_at"])
    except ValidationError as error:
        raise ValidationFailed(errors=error.message_dict) from error
    identity.save(force_insert=True)
    audit_record(
        actor=actor,
        action="staff_identity.link",
        entity_type="staff_identity",
        entity_id=user_id,
        after={"user_id": user_id, "molam_subject": molam_subject},
    )
    return identity


def _api_key_state(api_key: MerchantAPIKey) -> dict[str, Any]:
    """A key as its audit entries show it. Never its secret nor its hash (nor its id, which
    holds the hash): the prefix names it, as in the `apikey:<prefix>` actor id it acts under."""
    return {
        "prefix": api_key.prefix,
        "name": api_key.name,
        "merchant_id": api_key.merchant_id,
        "permissions": sorted(api_key.permissions),
        "expiry_date": api_key.expiry_date,
        "revoked": api_key.revoked,
        "created_by": api_key.created_by,
    }


def _api_key_clean(api_key: MerchantAPIKey) -> None:
    try:
        api_key.full_clean(exclude=["id", "hashed_key", "prefix", "merchant"])
    except ValidationError as error:
        raise ValidationFailed(errors=error.message_dict) from error


@transaction.atomic(durable=True)
def apikey_create(
    *,
    merchant_id: str,
    name: str,
    permissions: list[str],
    actor: Actor,
    expiry_date: datetime | None = None,
    created_by: str = "",
) -> tuple[MerchantAPIKey, str]:
    """Creates a merchant's API key (and the merchant on first use); returns it with its
    secret, which is shown once and stored only hashed. Audited (`api_key.create`)."""
    if not isinstance(merchant_id, str) or (
        not re.fullmatch(MERCHANT_ID_PATTERN, merchant_id)
        and not Merchant.objects.filter(id=merchant_id).exists()  # one made before the rule
    ):
        # get_or_create validates nothing: "m 1/é" or a trailing space would be a merchant of
        # its own, never deleted (an empty id would be one too, a long one a crash).
        raise ValidationFailed(
            errors={
                "merchant": [
                    "A merchant id as the platform writes them: 1 to 64 letters, digits and "
                    "_ . : - (the API's rule)."
                ]
            }
        )
    merchant, _ = Merchant.objects.get_or_create(id=merchant_id)
    api_key = MerchantAPIKey(
        merchant=merchant,
        name=name,
        permissions=sorted(set(permissions)),
        expiry_date=expiry_date,
        created_by=created_by,
    )
    _api_key_clean(api_key)
    key = MerchantAPIKey.objects.assign_key(api_key)
    api_key.save(force_insert=True)
    audit_record(
        actor=actor,
        action="api_key.create",
        entity_type="api_key",
        entity_id=api_key.prefix,
        merchant_id=api_key.merchant_id,
        after=_api_key_state(api_key),
    )
    return api_key, key


@transaction.atomic(durable=True)
def apikey_update(*, key_id: str, changes: dict[str, Any], actor: Actor) -> MerchantAPIKey:
    """Changes a key's name, permissions, expiry, or revokes it (irreversibly). Audited with
    the changed fields before and after: `api_key.revoke` when it revokes the key, else
    `api_key.update`. Changing nothing writes nothing."""
    unknown = set(changes) - API_KEY_UPDATABLE
    if unknown:
        raise ValidationFailed(errors={f: ["Not changeable on an existing key."] for f in unknown})
    api_key = MerchantAPIKey.objects.select_for_update().get(pk=key_id)
    before = _api_key_state(api_key)
    for field, value in changes.items():
        setattr(api_key, field, sorted(set(value)) if field == "permissions" else value)
    _api_key_clean(api_key)  # refuses un-revoking and permissions a key may not hold
    after = _api_key_state(api_key)
    changed = [f for f in after if after[f] != before[f]]
    if not changed:
        return api_key
    api_key.save(update_fields=changed)
    revoked = api_key.revoked and not before["revoked"]
    audit_record(
        actor=actor,
        action="api_key.revoke" if revoked else "api_key.update",
        entity_type="api_key",
        entity_id=api_key.prefix,
        merchant_id=api_key.merchant_id,
        before={f: before[f] for f in changed},
        after={f: after[f] for f in changed},
    )
    return api_key
