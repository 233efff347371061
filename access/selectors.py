"""Who a staff user is: one actor id per person across the admin and the API.

A person calls the API with a Molam ID token (actor id: the token's `sub`) and may also be a
staff user of the admin. Once the user is linked to their subject (`StaffIdentity`) they act
in the admin under that same subject, so the approvals' "distinct people" rules see one
person whichever channel they use. An unlinked staff user acts as `user:<pk>`; a token whose
`sub` is linked to nobody (a machine client) is unaffected.
"""

import re

from django.db.models import Q

from loyalty.actors import Actor

from .caller import client_ip, user_agent
from .models import StaffIdentity
from .permissions import ROLE_ORDER

_USER_ACTOR_ID = re.compile(r"user:(\d+)")


def staff_actor_id(user) -> str:
    """The linked Molam ID subject of a staff user, else `user:<pk>`."""
    try:
        # The reverse one-to-one caches its answer (also "none") on this user object.
        return user.staff_identity.molam_subject
    except StaffIdentity.DoesNotExist:
        return f"user:{user.pk}"


def staff_actor(user, request=None) -> Actor:
    """A staff user (the admin's request.user, a login signal's user) as the actor of what
    they do: id from `staff_actor_id`, role from their groups, IP and user agent from the
    request when there is one."""
    from loyalty.roles import user_roles  # late: loyalty.roles imports the auth models

    roles = user_roles(user)
    fallback = "superuser" if user.is_superuser else "staff"
    role = next((r for r in ROLE_ORDER if r in roles), fallback)
    return Actor(
        id=staff_actor_id(user),
        role=role,
        # As for API callers: the client behind our trusted proxies, the user agent cut short.
        ip=client_ip(request) if request is not None else None,
        user_agent=user_agent(request) if request is not None else "",
    )


def person_actor_ids(actor_id: str) -> frozenset[str]:
    """Every actor id the person behind `actor_id` has acted under: a linked staff user's
    subject and their `user:<pk>` (what they acted as before the link), else `actor_id` alone."""
    match = _USER_ACTOR_ID.fullmatch(actor_id)
    where = Q(user_id=int(match[1])) if match else Q(molam_subject=actor_id)
    link = StaffIdentity.objects.filter(where).values_list("user_id", "molam_subject").first()
    if link is None:
        return frozenset({actor_id})
    return frozenset({actor_id, f"user:{link[0]}", link[1]})
