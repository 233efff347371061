"""Admin logins, failed logins and logouts, audited (Django auth signals).

Receivers only translate the signal into one `audit_record` call in its own small
transaction: a login is not otherwise a database write we could attach it to.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from access.caller import client_ip, user_agent
from loyalty.actors import Actor

from .services import audit_record


def _request_meta(request) -> tuple[str | None, str]:
    """The client behind our trusted proxies and its user agent, as for every other actor."""
    if request is None:
        return None, ""
    return client_ip(request), user_agent(request)


def _user_actor(user, request) -> Actor:
    # Late: access.selectors imports models, and this module is imported while apps load.
    from access.selectors import staff_actor

    return staff_actor(user, request)


@receiver(user_logged_in, dispatch_uid="audit_user_logged_in")
def audit_login(sender, request, user, **kwargs):
    with transaction.atomic():
        audit_record(
            actor=_user_actor(user, request),
            action="user.login",
            entity_type="user",
            entity_id=user.pk,
        )


@receiver(user_logged_out, dispatch_uid="audit_user_logged_out")
def audit_logout(sender, request, user, **kwargs):
    if user is None:  # the session had expired: nobody to name
        return
    with transaction.atomic():
        audit_record(
            actor=_user_actor(user, request),
            action="user.logout",
            entity_type="user",
            entity_id=user.pk,
        )


@receiver(user_login_failed, dispatch_uid="audit_user_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs):
    User = get_user_model()
    attempted = str(credentials.get(User.USERNAME_FIELD, "") or "")
    user = User.objects.filter(**{User.USERNAME_FIELD: attempted}).first() if attempted else None
    ip, user_agent = _request_meta(request)
    with transaction.atomic():
        audit_record(
            actor=Actor(id="anonymous", role="anonymous", ip=ip, user_agent=user_agent),
            action="user.login_failed",
            entity_type="user",
            entity_id=user.pk if user else "unknown",
            # `username` is fingerprinted (audit.pii): people type passwords into it.
            after={"username": attempted, "known_user": user is not None},
        )
