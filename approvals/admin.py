"""The approvals queue of the ops console, and the approval policies finance edits.

Requests are read-only here; approve and reject are admin actions behind a confirmation page
that shows what will run (the stored payload), who asked, and who approved so far. Decisions
go through the services, so every rule (maker cannot approve, one person one role, ...) holds
here exactly as in the API. The maker's own requests are marked as not approvable by them.
A staff user linked to their Molam ID subject acts here under that subject (the id they have
over the API), so the rules see one person on both channels.
"""

import contextvars
import json

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from access.selectors import person_actor_ids
from loyalty.admin import request_actor
from loyalty.admin_actions import run_each
from loyalty.roles import user_roles

from .models import ApprovalPolicy, ApprovalRequest
from .registry import policy_errors, policy_get, policy_loosening
from .selectors import approval_refusal
from .services import (
    approval_approve,
    approval_policy_update,
    approval_reject,
)

DECIDING_ROLES = {"ops_marketing", "finance_ops"}


# Who is looking at the request list, for its "you" column: per request, not on the admin
# object, which every thread of the process shares.
_viewer: contextvars.ContextVar[tuple[frozenset[str], set[str]]] = contextvars.ContextVar(
    "approval_viewer"
)


def _pretty(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


# What the list says of each request to the person looking at it (approvals.selectors).
_DECISION_NOTES = {
    "not_pending": "",
    "expired": "expired: no longer approvable",
    "maker": "your own request: not approvable by you",
    "already_approved": "approved by you",
    "no_missing_role": "no missing role of yours",
    None: "you may approve",
}


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    list_display = [
        "created_at", "operation", "target", "amount", "status", "maker_id", "approvals_so_far",
        "missing", "your_decision", "expires_at",
    ]  # fmt: skip
    list_filter = ["status", "operation"]
    search_fields = ["=id", "target", "=maker_id", "=merchant_id"]
    ordering = ["-created_at"]
    actions = ["approve_selected", "reject_selected"]
    fields = [
        "id", "operation", "status", "program", "merchant_id", "target", "amount", "payload_pretty",
        "maker_id", "maker_role", "required_roles", "approvals_so_far", "result_pretty",
        "error_code", "error_detail", "reject_reason", "decided_by", "created_at", "expires_at",
        "decided_at",
    ]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not user_roles(request.user) & DECIDING_ROLES:
            actions.pop("approve_selected", None)
            actions.pop("reject_selected", None)
        return actions

    def changelist_view(self, request, extra_context=None):
        # The queue: pending requests unless the user picks another status.
        if request.method == "GET" and not request.GET:
            request.GET = request.GET.copy()
            request.GET["status__exact"] = ApprovalRequest.Status.PENDING
            request.META["QUERY_STRING"] = request.GET.urlencode()
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("approvals")

    @admin.display(description="payload (what will run)")
    def payload_pretty(self, obj):
        return _pretty(obj.payload)

    @admin.display(description="result")
    def result_pretty(self, obj):
        return _pretty(obj.result)

    @admin.display(description="approvals")
    def approvals_so_far(self, obj):
        rows = [(a.actor_id, a.role, a.at.strftime("%Y-%m-%d %H:%M")) for a in obj.approvals.all()]
        if not rows:
            return "none yet"
        return format_html_join(", ", "{} as {} ({})", rows)

    @admin.display(description="missing roles")
    def missing(self, obj):
        return ", ".join(obj.missing_roles) if obj.status == "pending" else ""

    @admin.display(description="you")
    def your_decision(self, obj):
        actor_ids, roles = _viewer.get()
        return self._decision_note(obj, actor_ids, roles)

    def get_changelist_instance(self, request):
        # Who is looking, for the "you" column (one query for the roles, not one per row).
        _viewer.set((person_actor_ids(request_actor(request).id), user_roles(request.user)))
        return super().get_changelist_instance(request)

    @staticmethod
    def _decision_note(obj, actor_ids: frozenset[str], roles: set[str]) -> str:
        refusal = approval_refusal(obj, actor_ids=actor_ids, roles=roles)
        return _DECISION_NOTES[refusal]

    @admin.action(description="Approve selected requests…")
    def approve_selected(self, request, queryset):
        return self._decide(request, queryset, decision="approve")

    @admin.action(description="Reject selected requests…")
    def reject_selected(self, request, queryset):
        return self._decide(request, queryset, decision="reject")

    def _decide(self, request, queryset, *, decision: str):
        actor = request_actor(request)
        actor_ids = person_actor_ids(actor.id)
        roles = user_roles(request.user)
        requests = list(queryset.prefetch_related("approvals").order_by("created_at"))
        form = DecisionForm(request.POST if "confirm" in request.POST else None,
                            require_comment=decision == "reject")  # fmt: skip
        if "confirm" in request.POST and form.is_valid():
            comment = form.cleaned_data["comment"]
            service = approval_approve if decision == "approve" else approval_reject

            def decide(item):
                done = service(request_id=item.pk, actor=actor, roles=roles, comment=comment)
                return f"{item}: now {done.status}."

            run_each(self, request, requests, decide)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Confirm: {decision} {len(requests)} approval request(s)",
            "decision": decision,
            "requests": [
                {
                    "obj": item,
                    "payload": json.dumps(item.payload, indent=2, sort_keys=True),
                    "note": self._decision_note(item, actor_ids, roles),
                }
                for item in requests
            ],
            "form": form,
            "opts": self.model._meta,
            "action": f"{decision}_selected",
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/approvals/confirm_decision.html", context)


class DecisionForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args, require_comment: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["comment"].required = require_comment
        if require_comment:
            self.fields["comment"].label = "Reason (required)"


class ApprovalPolicyForm(forms.ModelForm):
    may_loosen = False  # set per user by ApprovalPolicyAdmin.get_form

    class Meta:
        model = ApprovalPolicy
        fields = ["operation", "enabled", "threshold", "required_roles", "ttl_hours"]
        help_texts = {"required_roles": 'A JSON list, e.g. ["ops_marketing", "finance_ops"].'}

    def clean(self):
        data = super().clean()
        roles = data.get("required_roles")
        errors = policy_errors(
            operation=data.get("operation") or self.instance.operation,
            threshold=data.get("threshold"),
            required_roles=list(roles) if isinstance(roles, list) else [],
            ttl_hours=data.get("ttl_hours"),
        )
        if not errors and not self.may_loosen:
            errors = policy_loosening(
                operation=data.get("operation") or self.instance.operation,
                enabled=data.get("enabled", False),
                threshold=data.get("threshold"),
                required_roles=list(roles),
            )
        for field, problems in errors.items():
            self.add_error(field if field in self.fields else None, problems)
        return data


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    """Finance edits thresholds here; saving goes through the audited service."""

    form = ApprovalPolicyForm
    list_display = ["operation", "enabled", "threshold", "roles", "ttl_hours", "updated_by",
                    "updated_at"]  # fmt: skip

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Django wraps this view in transaction.atomic; the service is a durable entry point
        # that owns its transaction, so run the view unwrapped.
        return self._changeform_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        return ["operation"] if obj else []

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        # Finance tightens; loosening (fewer approvals) is a platform administrator's.
        form.may_loosen = request.user.is_superuser
        return form

    def has_delete_permission(self, request, obj=None):
        return False  # removing the row would silently fall back to settings: edit it instead

    @admin.display(description="required roles")
    def roles(self, obj):
        return ", ".join(obj.required_roles)

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        operation = initial.get("operation")
        if operation:
            policy = policy_get(operation)
            initial.update(enabled=policy.enabled, threshold=policy.threshold,
                           required_roles=list(policy.required_roles),
                           ttl_hours=policy.ttl_hours)  # fmt: skip
        return initial

    def save_model(self, request, obj, form, change):
        # The form validated with the service's own rules; the service audits the change.
        data = form.cleaned_data
        saved = approval_policy_update(
            operation=data.get("operation", obj.operation), actor=request_actor(request),
            enabled=data["enabled"],
            threshold=data["threshold"], required_roles=list(data["required_roles"]),
            ttl_hours=data["ttl_hours"], may_loosen=request.user.is_superuser,
        )  # fmt: skip
        obj.pk = saved.pk
