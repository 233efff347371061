"""The ops console: programs, members, the ledger and redemptions for ops, finance and auditors.

The ledger and everything the engine writes (entries, lots, redemptions, vouchers, snapshots,
jobs, outbox) are read-only here; changes go through services, in their own transactions,
and are audited there. What a role may change or run follows the API's permission map
(`loyalty.roles.user_permissions`), not the Django model permissions alone.
"""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.html import format_html_join
from guardian.shortcuts import get_objects_for_user

from access.approval_gate import approval_gate
from access.selectors import staff_actor
from audit.services import audit_record

from .actors import Actor
from .admin_actions import run_each
from .admin_jobs import JOB_ACTIONS, ROLLBACK_ACTIONS, JobActionsMixin, TierRollbackMixin
from .errors import DomainError, ValidationFailed
from .models import (
    BudgetShard,
    Campaign,
    CampaignAward,
    Job,
    LedgerEntry,
    MemberBalance,
    Merchant,
    OutboxEvent,
    PointLot,
    Program,
    Redemption,
    Tier,
    TierSnapshot,
    Voucher,
)
from .roles import user_has_permission, user_roles
from .services import (
    balance_set_frozen,
    program_create,
    program_set_status,
    program_update,
    redemption_release,
)
from .services.budget import budget_spent as program_budget_spent
from .services.budget import with_budget_spent
from .services.campaigns_admin import campaign_update
from .services.programs import (
    UPDATABLE_FIELDS,
    program_create_check,
    program_status_check,
    program_update_check,
)


def request_actor(request) -> Actor:
    """The staff user as an actor: their Molam ID subject when linked (the id they have over
    the API), else `user:<pk>`; role from their groups (the most privileged first)."""
    return staff_actor(request.user, request)


def _gated(model_admin, request, **gate) -> bool:
    """True when the operation now waits for multi-signature approval (or was refused), so
    the console honours the same thresholds as the API (access.approval_gate)."""
    try:
        pending = approval_gate(**gate)
    except DomainError as error:
        model_admin.message_user(request, f"{error.detail} ({error.code})", messages.ERROR)
        return True
    if pending is None:
        return False
    model_admin.message_user(
        request,
        f"{gate['operation']} on {gate['target']} waits for approval by "
        f"{', '.join(pending.required_roles)} (request {pending.pk}).",
        messages.WARNING,
    )
    return True


def visible_merchants(user):
    """The merchants a staff user may see: None for all of them (superusers and platform
    roles), else those a `merchant_admin` holds `loyalty.view_merchant` on (a queryset)."""
    if user.is_superuser or user_roles(user) - {"merchant_admin"}:
        return None
    return get_objects_for_user(
        user, "loyalty.view_merchant", klass=Merchant, accept_global_perms=False
    )


class ScopedAdmin(admin.ModelAdmin):
    """Staff whose only role is `merchant_admin` see only their merchants' objects."""

    merchant_path = "program__merchant"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        merchants = visible_merchants(request.user)
        if merchants is None:
            return queryset
        return queryset.filter(**{f"{self.merchant_path}__in": merchants})


class ProgramListFilter(admin.RelatedFieldListFilter):
    """The "By program" filter, offering only the programs the user may see (the scoping of
    `ScopedAdmin`): the stock filter lists every program, other merchants' included.
    (`RelatedOnlyFieldListFilter` would scope it too, by a SELECT DISTINCT over the list's
    rows: the whole ledger.)"""

    def field_choices(self, field, request, model_admin):
        merchants = visible_merchants(request.user)
        ordering = self.field_admin_ordering(field, request, model_admin)
        scope = {} if merchants is None else {"merchant__in": merchants}
        return field.get_choices(include_blank=False, ordering=ordering, limit_choices_to=scope)


PROGRAM_FILTER = ("program", ProgramListFilter)


class ReadOnlyAdmin(ScopedAdmin):
    """What the engine writes is never edited by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ServiceFormAdmin(ScopedAdmin):
    """Admin forms whose saves call a service.

    Django wraps the change form in `transaction.atomic`; our services are durable entry points
    that own their transaction, so the form view runs unwrapped (the service is atomic itself).
    """

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return self._changeform_view(request, object_id, form_url, extra_context)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Merchant)
class MerchantAdmin(ScopedAdmin):
    merchant_path = "pk"
    list_display = ["id", "name", "created_at"]
    search_fields = ["id", "name"]

    def get_readonly_fields(self, request, obj=None):
        return ["id", "created_at"] if obj else ["created_at"]

    def save_model(self, request, obj, form, change):
        # In the change form's transaction: the merchant and its audit entry commit together.
        before = {name: form.initial.get(name) for name in form.changed_data} if change else None
        super().save_model(request, obj, form, change)
        audit_record(
            actor=request_actor(request),
            action="merchant.update" if change else "merchant.create",
            entity_type="merchant",
            entity_id=obj.pk,
            merchant_id=obj.pk,
            before=before,
            after={name: form.cleaned_data.get(name) for name in form.changed_data},
        )

    def has_delete_permission(self, request, obj=None):
        return False


class ProgramAdminForm(forms.ModelForm):
    """Runs the service's own checks of the create or update (`program_create_check`,
    `program_update_check`), so what it would refuse shows against the form's fields rather
    than as an error page, and before a budget change is filed for approval."""

    def clean(self):
        data = super().clean()
        if self.errors:
            return data  # the fields' own errors first; the checks need their values
        try:
            if not self.instance._state.adding:  # (a new program has its UUID already)
                changes = {f: data[f] for f in self.changed_data if f in UPDATABLE_FIELDS}
                program_update_check(program=self.instance, changes=changes)
            else:
                fields = {f: data[f] for f in UPDATABLE_FIELDS - {"name"} if f in data}
                program_create_check(name=data["name"], currency=data["currency"], **fields)
        except ValidationFailed as error:
            for field, problems in error.errors.items():
                self.add_error(field if field in self.fields else None, problems)
        return data


@admin.register(Program)
class ProgramAdmin(JobActionsMixin, ServiceFormAdmin):
    form = ProgramAdminForm
    merchant_path = "merchant"
    list_display = ["name", "merchant", "currency", "status", "earn_rate", "budget_limit",
                    "budget_spent", "created_at"]  # fmt: skip
    list_filter = ["status", "currency"]
    search_fields = ["name", "merchant__id", "id"]
    readonly_fields = ["id", "status", "budget_spent", "tier_table", "created_at", "updated_at"]
    actions = ["suspend", "reactivate", *JOB_ACTIONS]

    def has_add_permission(self, request):
        # As over the API: creating a program needs `programs:create`.
        return super().has_add_permission(request) and user_has_permission(
            request.user, "programs:create"
        )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["id", "status"]
        locked = self.locked_fields(request)
        return [
            *self.readonly_fields, "merchant", "currency",
            *(f.name for f in Program._meta.fields if f.name in locked),
        ]  # fmt: skip

    def locked_fields(self, request) -> set[str]:
        """The program fields this user may not change, by the API's permission map: the
        budget needs `budgets:write` (finance), every other field `programs:write` (ops)."""
        locked = set()
        if not user_has_permission(request.user, "budgets:write"):
            locked.add("budget_limit")
        if not user_has_permission(request.user, "programs:write"):
            locked |= UPDATABLE_FIELDS - {"budget_limit"}
        return locked

    list_select_related = ["merchant"]

    def get_queryset(self, request):
        # One SUM per page in the list's own query, not one per row.
        return with_budget_spent(super().get_queryset(request))

    @admin.display(description="Budget spent", ordering="spent_total")
    def budget_spent(self, obj):
        return program_budget_spent(program=obj)

    @admin.display(description="Tiers")
    def tier_table(self, obj):
        return format_html_join(
            ", ",
            "{} (from {} points, {} spend, x{})",
            ((t.name, t.min_points, t.min_spend, t.earn_multiplier) for t in obj.tiers.all()),
        )

    def save_model(self, request, obj, form, change):
        actor = request_actor(request)
        if change:
            changes = {f: form.cleaned_data[f] for f in form.changed_data if f in UPDATABLE_FIELDS}
            # The form shows these read-only; refuse them here too, whatever was posted.
            refused = sorted(set(changes) & self.locked_fields(request))
            if refused:
                raise PermissionDenied(f"Your role may not change {', '.join(refused)}.")
            if not changes:  # saved as it was: nothing to change, nothing to audit
                obj.refresh_from_db()
                return
            old = Program.objects.values_list("budget_limit", flat=True).get(pk=obj.pk)
            new = changes.get("budget_limit", old)
            # A budget change waits for approval with the rest of the same update, as in the API.
            if new != old and _gated(
                self, request, operation="budget_change", program=obj,
                target=f"program:{obj.pk}", actor=actor,
                amount=None if old is None or new is None else new - old,
                payload={"program_id": str(obj.pk),
                         "changes": json.loads(json.dumps(changes, cls=DjangoJSONEncoder))},
            ):  # fmt: skip
                obj.refresh_from_db()
                return
            saved = program_update(program_id=obj.pk, changes=changes, actor=actor)
        else:
            fields = {f: form.cleaned_data[f] for f in UPDATABLE_FIELDS - {"name"}
                      if f in form.cleaned_data}  # fmt: skip
            saved = program_create(
                merchant_id=form.cleaned_data["merchant"].pk,
                name=form.cleaned_data["name"],
                currency=form.cleaned_data["currency"],
                actor=actor,
                **fields,
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    @admin.action(description="Suspend the selected programs", permissions=["change"])
    def suspend(self, request, queryset):
        self._set_status(request, queryset, Program.Status.SUSPENDED)

    @admin.action(description="Reactivate the selected programs", permissions=["change"])
    def reactivate(self, request, queryset):
        self._set_status(request, queryset, Program.Status.ACTIVE)

    def _set_status(self, request, queryset, status):
        actor = request_actor(request)

        def set_status(program):
            # The service's rule first: no approval request for a change it would refuse.
            if not program_status_check(program=program, status=status):
                return f"{program}: already {status}."
            if status == Program.Status.SUSPENDED and _gated(
                self, request, operation="program_suspend", program=program,
                target=f"program:{program.pk}", actor=actor,
                payload={"program_id": str(program.pk), "reason": "admin action"},
            ):  # fmt: skip
                return None
            program_set_status(program_id=program.pk, status=status, actor=actor,
                               reason="admin action")  # fmt: skip
            return f"{program}: now {status}."

        run_each(self, request, queryset, set_status)


@admin.register(MemberBalance)
class MemberBalanceAdmin(ReadOnlyAdmin):
    list_display = ["member_id", "program", "points_balance", "locked", "tier", "is_frozen",
                    "churn_risk", "last_activity_at"]  # fmt: skip
    list_filter = ["tier", "is_frozen", PROGRAM_FILTER]
    search_fields = ["member_id"]
    list_select_related = ["program"]
    exclude = ["encrypted_meta"]
    actions = ["freeze", "unfreeze"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        # No field is editable, but finance may run the freeze actions.
        return obj is None and request.user.has_perm("loyalty.change_memberbalance")

    @admin.action(description="Freeze the selected members", permissions=["change"])
    def freeze(self, request, queryset):
        self._set_frozen(request, queryset, frozen=True)

    @admin.action(description="Unfreeze the selected members", permissions=["change"])
    def unfreeze(self, request, queryset):
        self._set_frozen(request, queryset, frozen=False)

    def _set_frozen(self, request, queryset, *, frozen):
        actor = request_actor(request)

        def set_frozen(balance):
            if frozen and _gated(
                self, request, operation="member_freeze", program=balance.program,
                target=f"balance:{balance.program_id}:{balance.member_id}", actor=actor,
                payload={"program_id": str(balance.program_id), "member_id": balance.member_id,
                         "reason": "admin action"},
            ):  # fmt: skip
                return None
            balance_set_frozen(program=balance.program, member_id=balance.member_id,
                               frozen=frozen, actor=actor, reason="admin action")  # fmt: skip
            return balance.member_id

        run_each(self, request, queryset.select_related("program"), set_frozen,
                 name=lambda balance: balance.member_id,
                 summary=lambda done: f"{done} member(s) updated.")  # fmt: skip


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "points", "balance_after", "amount", "currency", "reference",
                    "actor_id", "created_at"]  # fmt: skip
    list_filter = ["type", PROGRAM_FILTER]
    search_fields = ["balance__member_id", "reference", "idempotency_key"]
    list_select_related = ["balance"]
    show_full_result_count = False
    exclude = ["details"]
    readonly_fields = ["details_shown"]

    @admin.display(description="details")
    def details_shown(self, entry):
        """The entry's details, a voucher code (a bearer secret, whole in captures written
        before the ledger kept the voucher's id instead) by its last four."""
        details = dict(entry.details or {})
        code = details.pop("voucher_code", None)
        if isinstance(code, str):
            details["voucher_code_last4"] = code[-4:]
        return json.dumps(details, indent=2, sort_keys=True, cls=DjangoJSONEncoder)


@admin.register(PointLot)
class PointLotAdmin(ReadOnlyAdmin):
    list_display = ["id", "balance", "points", "remaining", "earned_at", "expires_at"]
    search_fields = ["balance__member_id"]
    list_select_related = ["balance"]
    show_full_result_count = False


@admin.register(Redemption)
class RedemptionAdmin(ReadOnlyAdmin):
    list_display = ["id", "balance", "points", "value", "reward_type", "status", "expires_at",
                    "created_at"]  # fmt: skip
    list_filter = ["status", "reward_type"]
    search_fields = ["balance__member_id", "idempotency_key"]
    list_select_related = ["balance"]
    actions = ["release"]

    def has_release_permission(self, request) -> bool:
        # As over the API (`redemptions:write`, held by the system role): not a staff role's.
        return user_has_permission(request.user, "redemptions:write")

    @admin.action(description="Release the selected pending holds", permissions=["release"])
    def release(self, request, queryset):
        actor = request_actor(request)

        def release(redemption):
            redemption_release(redemption_id=redemption.pk, actor=actor)
            return str(redemption.pk)

        run_each(self, request, queryset.filter(status=Redemption.Status.PENDING), release,
                 name=lambda redemption: f"Redemption {redemption.pk}",
                 summary=lambda done: f"{done} hold(s) released.")  # fmt: skip


class VoucherStatusFilter(admin.SimpleListFilter):
    """By status as of now: an active voucher past its date is listed as expired before the
    hold-expiry job sweeps it."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return Voucher.Status.choices

    def queryset(self, request, queryset):
        if self.value() in Voucher.Status.values:
            return queryset.filter(Voucher.current_status_q(self.value()))
        return queryset


@admin.register(Voucher)
class VoucherAdmin(ReadOnlyAdmin):
    # A code is a bearer secret: shown by its last four characters (a whole one, searched for,
    # still finds its voucher), never whole to whoever may read the console.
    list_display = ["code_last4", "type", "value", "currency", "status_now", "expires_at",
                    "redeemed_at"]  # fmt: skip
    list_filter = [VoucherStatusFilter, "type"]
    # Exact: a search by part of a code would tell, one character at a time, the whole of it.
    search_fields = ["=code", "balance__member_id"]
    exclude = ["code"]
    readonly_fields = ["code_last4"]

    @admin.display(description="code")
    def code_last4(self, voucher):
        return f"…{voucher.code[-4:]}"

    @admin.display(description="status", ordering="status")
    def status_now(self, voucher):
        return Voucher.Status(voucher.current_status).label


@admin.register(TierSnapshot)
class TierSnapshotAdmin(TierRollbackMixin, ReadOnlyAdmin):
    list_display = ["balance", "from_tier", "to_tier", "reason", "actor_id", "created_at",
                    "rolled_back_at"]  # fmt: skip
    search_fields = ["balance__member_id"]
    list_select_related = ["balance"]
    actions = ROLLBACK_ACTIONS


@admin.register(Tier)
class TierAdmin(ReadOnlyAdmin):
    list_display = ["program", "rank", "name", "min_points", "min_spend", "earn_multiplier"]
    list_filter = [PROGRAM_FILTER]


@admin.register(BudgetShard)
class BudgetShardAdmin(ReadOnlyAdmin):
    list_display = ["program", "shard", "allocated", "spent"]
    list_filter = [PROGRAM_FILTER]


@admin.register(Campaign)
class CampaignAdmin(ReadOnlyAdmin):
    list_display = ["name", "program", "segment", "bonus_points", "scheduled_at", "status",
                    "awarded_count", "failed_count"]  # fmt: skip
    list_filter = ["status", "segment"]
    search_fields = ["name"]
    actions = ["cancel"]

    def has_cancel_permission(self, request) -> bool:
        # As over the API (`campaigns:write`, ops): a wrong campaign is stopped before it runs.
        return user_has_permission(request.user, "campaigns:write")

    @admin.action(
        description="Cancel the selected campaigns (draft or scheduled)", permissions=["cancel"]
    )
    def cancel(self, request, queryset):
        actor = request_actor(request)

        def cancel(campaign):
            campaign_update(
                campaign_id=campaign.pk, changes={"status": Campaign.Status.CANCELLED}, actor=actor
            )
            return str(campaign.pk)

        run_each(self, request, queryset, cancel, name=lambda campaign: f"Campaign {campaign.name}",
                 summary=lambda done: f"{done} campaign(s) cancelled.")  # fmt: skip


@admin.register(CampaignAward)
class CampaignAwardAdmin(ReadOnlyAdmin):
    merchant_path = "campaign__program__merchant"
    list_display = ["campaign", "balance", "status", "error_code", "created_at"]


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "program", "status", "counts", "triggered_by", "started_at",
                    "finished_at"]  # fmt: skip
    list_filter = ["kind", "status"]
    list_select_related = ["program"]


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    merchant_path = "merchant"
    list_display = ["id", "event_type", "merchant", "created_at", "dispatched_at"]
    list_filter = ["event_type"]
