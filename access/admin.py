from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin

from .models import IdempotencyRecord, MerchantAPIKey


@admin.register(MerchantAPIKey)
class MerchantAPIKeyAdmin(APIKeyModelAdmin):
    """Keys are shown once, on creation (the library's admin message); only hashes are kept."""

    list_display = [*APIKeyModelAdmin.list_display, "merchant"]
    list_filter = [*APIKeyModelAdmin.list_filter, "merchant"]
    search_fields = [*APIKeyModelAdmin.search_fields, "merchant__id"]
    raw_id_fields = ["merchant"]

    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), "created_by")

    # The form runs MerchantAPIKey.clean(), which refuses permissions a key may not hold.
    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = str(request.user.pk)
        super().save_model(request, obj, form, change)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    """Read-only: a record is the stored outcome of a request, never edited by hand."""

    list_display = ["scope", "key", "method", "path", "status", "response_status", "created_at"]
    list_filter = ["status", "method"]
    search_fields = ["scope", "key", "path"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
