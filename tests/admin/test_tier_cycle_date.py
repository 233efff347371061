"""The console keeps the API's rule for the tier review date: one being set is the program's
local today or later, shown against the field (not an error page); the stored date, sent
back unchanged, still saves."""

from datetime import date, datetime

import pytest
import time_machine
from django.urls import reverse

from audit.models import AuditEntry
from loyalty.models import Program
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def _post(client, program, **fields):
    url = reverse("admin:loyalty_program_change", args=[program.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "sira_settings"}
    data.update({"sira_settings": "{}", "name": program.name, **fields})
    return client.post(url, data)


def test_a_past_review_date_is_a_form_error_and_today_saves(client, program):
    client.force_login(make_user("ops-user", "ops_marketing"))
    with time_machine.travel(datetime.fromisoformat("2026-11-28T12:00:00+00:00"), tick=False):
        refused = _post(client, program, tier_cycle_date="2026-11-27")
        assert refused.status_code == 200
        errors = refused.context["adminform"].form.errors
        assert list(errors) == ["tier_cycle_date"]
        program.refresh_from_db()
        assert program.tier_cycle_date is None
        assert not AuditEntry.objects.filter(action="program.update").exists()

        saved = _post(client, program, tier_cycle_date="2026-11-28")
        assert saved.status_code == 302
        program.refresh_from_db()
        assert program.tier_cycle_date == date(2026, 11, 28)


def test_the_stored_date_passed_since_still_saves_unchanged(client, program):
    Program.objects.filter(pk=program.pk).update(tier_cycle_date=date(2024, 1, 1))
    program.refresh_from_db()
    client.force_login(make_user("ops-user", "ops_marketing"))
    response = _post(client, program, earn_rate="0.03")
    assert response.status_code == 302, response.context["adminform"].form.errors
    program.refresh_from_db()
    assert (str(program.earn_rate), program.tier_cycle_date) == ("0.030000", date(2024, 1, 1))
