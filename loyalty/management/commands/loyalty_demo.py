"""Demo data for a local run: a merchant, an XOF program with tiers, members with history,
and one staff user per role (passwords generated and printed on every run), each linked to a
Molam ID subject (`demo-<username>`): a token with that `sub` is the same person as the staff
user, so the approval rules (maker cannot approve, one person one role) hold across the API
and the admin."""

import secrets
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from guardian.shortcuts import assign_perm

from access.models import MerchantAPIKey, StaffIdentity
from access.permissions import API_KEY_DEFAULT_PERMISSIONS
from access.services import apikey_create, apikey_update, staff_identity_link
from loyalty.actors import system_actor
from loyalty.models import Merchant, Program
from loyalty.roles import ROLES, roles_install
from loyalty.services import (
    EventInput,
    event_ingest,
    program_create,
    redemption_capture,
    redemption_hold,
)

MERCHANT_ID = "m_demo"


class Command(BaseCommand):
    help = "Loads demo data (idempotent) and prints the staff logins."

    def handle(self, *args, **options):
        groups = roles_install()
        program = Program.objects.filter(merchant_id=MERCHANT_ID, name="Eats Rewards").first()
        if program is None:
            program = self._program()
            self._history(program)
        credentials = self._users(groups)
        api_key = self._api_key()
        self.stdout.write(self.style.SUCCESS(f"Demo program: {program.name} id={program.pk}"))
        self.stdout.write(
            f"API key of merchant {MERCHANT_ID} (new each run, the last one revoked):"
        )
        self.stdout.write(f"  Authorization: Api-Key {api_key}")
        self.stdout.write(
            "Staff logins for http://127.0.0.1:8000/admin/ (new passwords each run), with the "
            "Molam ID subject (JWT `sub`) each one is over the API:"
        )
        for username, password, role, subject in credentials:
            self.stdout.write(f"  {username:<16} {password}   ({role}; sub {subject})")

    def _program(self) -> Program:
        return program_create(
            merchant_id=MERCHANT_ID,
            name="Eats Rewards",
            currency="XOF",
            timezone="Africa/Dakar",
            earn_rate=Decimal("0.02"),
            point_value=Decimal("1"),
            expiry_days=365,
            budget_limit=Decimal("1000000"),
            max_earn_per_day=Decimal("5000"),
            # Thresholds in XOF (the seed's dollar figures, times ~600).
            sira_settings={
                "high_value_amount": "300000",
                "ltv_spend": "6000000",
                "stagnation_spend": "180000",
            },
            actor=system_actor("demo"),
        )

    def _history(self, program: Program) -> None:
        actor = system_actor("demo")
        for n in range(1, 21):
            member = f"u_{n:03d}"
            for k in range(n % 5 + 1):
                event_ingest(
                    program=program,
                    actor=actor,
                    event=EventInput(
                        type="purchase", member_id=member, idempotency_key=f"demo-{member}-{k}",
                        amount=Decimal(5000 * (k + 1) + 250 * n), currency="XOF",
                        module="eats" if k % 2 else "shop", reference=f"demo-order-{member}-{k}",
                    ),
                )  # fmt: skip
        event_ingest(
            program=program,
            actor=actor,
            event=EventInput(type="referral", member_id="u_001", idempotency_key="demo-ref-1",
                             points=Decimal("500"), reason="referred u_021"),
        )  # fmt: skip
        hold = redemption_hold(program=program, member_id="u_009", points=Decimal("200"),
                               reward_type="discount", idempotency_key="demo-redeem-1",
                               actor=actor)  # fmt: skip
        redemption_capture(redemption_id=hold.pk, actor=actor)
        redemption_hold(program=program, member_id="u_014", points=Decimal("100"),
                        reward_type="wallet_topup", idempotency_key="demo-redeem-2",
                        actor=actor)  # fmt: skip
        event_ingest(
            program=program,
            actor=actor,
            event=EventInput(type="refund", member_id="u_004", idempotency_key="demo-refund-1",
                             amount=Decimal("2500"), currency="XOF", reference="demo-refund-1",
                             original_reference="demo-order-u_004-0"),
        )  # fmt: skip

    def _api_key(self) -> str:
        actor = system_actor("demo")
        old = MerchantAPIKey.objects.filter(merchant_id=MERCHANT_ID, name="demo", revoked=False)
        for key_id in old.values_list("pk", flat=True):
            apikey_update(key_id=key_id, changes={"revoked": True}, actor=actor)
        _, key = apikey_create(
            merchant_id=MERCHANT_ID,
            name="demo",
            permissions=list(API_KEY_DEFAULT_PERMISSIONS),
            created_by="loyalty_demo",
            actor=actor,
        )
        return key

    def _users(self, groups) -> list[tuple[str, str, str, str]]:
        user_model = get_user_model()
        merchant = Merchant.objects.get(pk=MERCHANT_ID)
        out = []
        for username, role in [("admin", "superuser"), *((r, r) for r in ROLES)]:
            password = secrets.token_urlsafe(12)
            user, _ = user_model.objects.get_or_create(username=username)
            user.is_staff = True
            user.is_superuser = role == "superuser"
            user.set_password(password)
            user.save()
            if role in groups:
                user.groups.set([groups[role]])
            if role == "merchant_admin":
                assign_perm("loyalty.view_merchant", user, merchant)
            link = StaffIdentity.objects.filter(user=user).first()
            if link is None:  # a link is permanent: made once, on the first run
                link = staff_identity_link(user_id=user.pk, molam_subject=f"demo-{username}",
                                           actor=system_actor("demo"))  # fmt: skip
            out.append((username, password, role, link.molam_subject))
        return out
