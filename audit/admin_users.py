"""Staff users and their roles, changed in the admin, audited.

A user's groups are their roles: who may adjust balances, change budgets, approve. Django's
own user admin writes them with no trace, so it is replaced by one that records each change
(the state before and after: roles, staff and superuser flags, active, direct permissions;
a password change as the fact alone, never the hash)."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction

from access.selectors import staff_actor

from .services import audit_record

User = get_user_model()


def _user_state(user) -> dict:
    """What the trail records of a staff user. The e-mail is where password resets go:
    changing it is a write like a role's. Names and e-mail are fingerprinted (audit.pii).
    (Not `date_joined`: the admin's form sends it without microseconds, so an unchanged
    save would read as a change.)"""
    return {
        "username": user.get_username(),  # fingerprinted in the trail (audit.pii)
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": sorted(user.groups.values_list("name", flat=True)),
        "user_permissions": _permission_names(user.user_permissions),
    }


def _permission_names(permissions) -> list[str]:
    """`app.codename` of each permission, sorted (a codename alone is ambiguous)."""
    rows = permissions.values_list("content_type__app_label", "codename")
    return sorted(f"{app}.{codename}" for app, codename in rows)


def _actor(request):
    return staff_actor(request.user, request)


class AuditedUserAdmin(UserAdmin):
    def save_model(self, request, obj, form, change):
        # Read before the form's values are saved (the groups are saved after, by
        # save_related, where the entry is written).
        request.audit_user_before = (
            _user_state(User.objects.get(pk=obj.pk)) if change and obj.pk else None
        )
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        before = getattr(request, "audit_user_before", None)
        after = _user_state(form.instance)
        if change and before == after:
            return  # nothing of what the trail records changed
        audit_record(
            actor=_actor(request),
            action="user.update" if change else "user.create",
            entity_type="user",
            entity_id=form.instance.pk,
            before=before,
            after=after,
        )

    def user_change_password(self, request, id, form_url=""):
        return _password_change_audited(
            request, id, lambda: super(AuditedUserAdmin, self).user_change_password(
                request, id, form_url
            )
        )  # fmt: skip

    def delete_model(self, request, obj):
        self.delete_queryset(request, User.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        # Django's delete views run in a transaction: the entries commit with the deletion.
        for user in queryset:
            audit_record(
                actor=_actor(request),
                action="user.delete",
                entity_type="user",
                entity_id=user.pk,
                before=_user_state(user),
            )
        super().delete_queryset(request, queryset)


def _group_state(group, name: str | None = None) -> dict:
    return {
        "name": name if name is not None else group.name,
        "permissions": _permission_names(group.permissions),
    }


class AuditedGroupAdmin(GroupAdmin):
    """A role's admin permissions (loyalty.roles sets them; `migrate` sets them back): a
    change here, or a deletion (which takes the role from every member), is audited."""

    def save_related(self, request, form, formsets, change):
        before = _group_state(form.instance, form.initial.get("name")) if change else None
        super().save_related(request, form, formsets, change)
        after = _group_state(form.instance)
        if change and before == after:
            return
        audit_record(
            actor=_actor(request),
            action="group.update" if change else "group.create",
            entity_type="group",
            entity_id=form.instance.pk,
            before=before,
            after=after,
        )

    def delete_model(self, request, obj):
        self.delete_queryset(request, Group.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        for group in queryset:
            audit_record(
                actor=_actor(request),
                action="group.delete",
                entity_type="group",
                entity_id=group.pk,
                before={**_group_state(group), "members": group.user_set.count()},
            )
        super().delete_queryset(request, queryset)


for model, model_admin in ((User, AuditedUserAdmin), (Group, AuditedGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)


def _audited_own_password_change(change):
    """The admin site's own "Change password" page (any staff user's, for themselves), audited
    as the user admin's password form is: the site's view writes no trace of its own."""

    def password_change(request, extra_context=None):
        return _password_change_audited(
            request, request.user.pk, lambda: change(request, extra_context)
        )

    return password_change


def _password_change_audited(request, user_id, change):
    """Runs a password form's view (`change()`); a password it saved (a redirect after POST)
    is audited as the fact alone, in one transaction with the new password."""
    with transaction.atomic():
        response = change()
        if request.method == "POST" and response.status_code == 302:
            audit_record(
                actor=_actor(request),
                action="user.password_change",
                entity_type="user",
                entity_id=user_id,
            )
    return response


# Before the URLconf reads the site's views (this module loads with the admin's autodiscovery).
admin.site.password_change = _audited_own_password_change(admin.site.password_change)
