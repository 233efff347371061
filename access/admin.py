import contextlib
import json

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from .idempotency import replay_response
from .models import IdempotencyRecord, MerchantAPIKey, StaffIdentity
from .selectors import staff_actor
from .services import API_KEY_UPDATABLE, apikey_create, apikey_update, staff_identity_link

# The library's own key model: the API never reads it (merchant keys are MerchantAPIKey), so a
# key made in its stock admin would be shown once, unaudited, and refused everywhere.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


@admin.register(MerchantAPIKey)
class MerchantAPIKeyAdmin(APIKeyModelAdmin):
    """Keys are shown once, on creation (the library's admin message); only hashes are kept.

    Creating, changing and revoking a key go through the audited services (`api_key.create`,
    `api_key.update`, `api_key.revoke`). A key stays bound to its merchant and keeps the
    permissions it was created with (to grant others, create a new key and revoke this one);
    a key is revoked, never deleted, so its audit trail and its requests' actor id
    (`apikey:<prefix>`) keep naming it.
    """

    # Django's own change log would keep `obj.pk`, which is "<prefix>.<hash>": the audit trail
    # records these changes by prefix, so the key's hash is kept nowhere else.
    def log_addition(self, request, obj, message):
        return None

    def log_change(self, request, obj, message):
        return None

    def log_deletion(self, request, obj, object_repr):
        return None

    def log_deletions(self, request, queryset):
        return None

    list_display = [*APIKeyModelAdmin.list_display, "merchant"]
    list_filter = [*APIKeyModelAdmin.list_filter, "merchant"]
    search_fields = [*APIKeyModelAdmin.search_fields, "merchant__id"]
    raw_id_fields = ["merchant"]

    def get_readonly_fields(self, request, obj=None):
        fields = (*super().get_readonly_fields(request, obj), "created_by")
        if obj is not None:
            fields = (*fields, "merchant", "permissions")
        return fields

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Django wraps this view in transaction.atomic; the services are durable entry points
        # that own their transaction, so run the view unwrapped.
        return self._changeform_view(request, object_id, form_url, extra_context)

    def has_delete_permission(self, request, obj=None):
        return False

    # The form runs MerchantAPIKey.clean(), which refuses permissions a key may not hold; the
    # services check again in their transaction.
    def save_model(self, request, obj, form, change):
        actor = staff_actor(request.user, request)
        if change:
            changes = {f: form.cleaned_data[f] for f in form.changed_data if f in API_KEY_UPDATABLE}
            saved = apikey_update(key_id=obj.pk, changes=changes, actor=actor)
        else:
            saved, key = apikey_create(
                merchant_id=form.cleaned_data["merchant"].pk,
                name=form.cleaned_data["name"],
                permissions=form.cleaned_data["permissions"],
                expiry_date=form.cleaned_data.get("expiry_date"),
                created_by=str(request.user.pk),
                actor=actor,
            )
            messages.warning(
                request,
                f"The API key for {saved.name} is: {key}. Please store it somewhere safe: "
                "you will not be able to see it again.",
            )
        for field in MerchantAPIKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding, obj._state.db = False, saved._state.db


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    """Read-only: a record is the stored outcome of a request, never edited by hand."""

    list_display = ["scope", "key", "method", "path", "status", "response_status", "created_at"]
    list_filter = ["status", "method"]
    search_fields = ["scope", "key", "path"]
    date_hierarchy = "created_at"
    readonly_fields = ["response"]

    @admin.display(description="Response body")
    def response(self, obj):
        """The stored answer as text, JSON indented: it is kept as the compact bytes sent."""
        if obj.response_bytes is None and obj.response_body is None:
            return "-"
        text = replay_response(obj).content.decode(errors="replace")
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        return format_html("<pre>{}</pre>", text)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(StaffIdentity)
class StaffIdentityAdmin(admin.ModelAdmin):
    """Links a staff user to their Molam ID subject, so they are one actor on the admin and the
    API. Like users and groups, only superusers (or a group granted `access.add_staffidentity`)
    manage links. A link is added, never edited nor deleted (see `StaffIdentity`); nobody links
    their own account; the service audits each link."""

    list_display = ["user", "molam_subject", "created_at"]
    search_fields = ["=molam_subject", "user__username"]
    fields = ["user", "molam_subject", "created_at"]
    readonly_fields = ["created_at"]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Django wraps this view in transaction.atomic; the service is a durable entry point
        # that owns its transaction, so run the view unwrapped.
        return self._changeform_view(request, object_id, form_url, extra_context)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            kwargs["queryset"] = (
                get_user_model()
                .objects.filter(is_staff=True, staff_identity__isnull=True)
                .exclude(pk=request.user.pk)
                .order_by("username")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        # The form has checked the fields, uniqueness and the user (staff, unlinked, not
        # oneself); the service checks again in its transaction and writes the audit entry.
        saved = staff_identity_link(
            user_id=form.cleaned_data["user"].pk,
            molam_subject=form.cleaned_data["molam_subject"],
            actor=staff_actor(request.user, request),
        )
        obj.pk = saved.pk
        obj.created_at = saved.created_at
