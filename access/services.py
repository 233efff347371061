"""Writes of the access app that are not part of a request's handling: staff identities."""

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.services import audit_record
from loyalty.actors import Actor
from loyalty.errors import ValidationFailed

from .models import StaffIdentity


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
