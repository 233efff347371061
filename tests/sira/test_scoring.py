"""SIRA scoring at ingestion: the seed's eight rules with its thresholds as defaults, each
overridable per program. Pure functions: no database."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sira.scoring import (
    DEFAULT_SIRA_SETTINGS,
    MemberFacts,
    sira_score_purchase,
    sira_settings_resolve,
)

D = Decimal
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def facts(**overrides) -> MemberFacts:
    """A member no rule fires for."""
    base = {
        "churn_risk": D("0.1"),
        "engagement_score": D("0.1"),
        "lifetime_spend": D("0"),
        "on_entry_tier": False,
        "last_purchase_at": None,
        "first_purchase_today": False,
    }
    return MemberFacts(**{**base, **overrides})


def score(member=None, amount="100", module="shop", **overrides):
    return sira_score_purchase(
        member=member or facts(),
        amount=D(amount),
        module=module,
        now=NOW,
        settings=sira_settings_resolve(overrides),
    )


def test_no_rule_fires_for_an_ordinary_purchase():
    result = score()
    assert result.multiplier == D("1")
    assert result.bonus_points == D("0")
    assert result.reasons == []
    assert result.as_dict() == {
        "multiplier": "1.00",
        "bonus_points": "0.00",
        "reasons": [],
        "confidence": "0.50",
    }


@pytest.mark.parametrize(
    ("kwargs", "reason", "multiplier", "bonus"),
    [
        # 1. high value: strictly over 500
        ({"amount": "500.01"}, "high_value_transaction", "1.01", "0"),
        # 2. churn: over 0.7 -> +2%, over 0.5 -> +1%
        ({"member": facts(churn_risk=D("0.71"))}, "churn_prevention_high", "1.02", "0"),
        ({"member": facts(churn_risk=D("0.51"))}, "churn_prevention_medium", "1.01", "0"),
        # 3. frequency: previous purchase less than 7 days ago
        (
            {"member": facts(last_purchase_at=NOW - timedelta(days=6, hours=23))},
            "frequent_purchaser",
            "1.005",
            "0",
        ),
        # 4. first purchase of the day: +10 points
        ({"member": facts(first_purchase_today=True)}, "first_daily_purchase", "1", "10"),
        # 5. cross-module: Eats
        ({"module": "eats"}, "cross_module_promotion", "1.015", "0"),
        # 6. lifetime value over 10,000
        ({"member": facts(lifetime_spend=D("10000.01"))}, "high_lifetime_value", "1.01", "0"),
        # 7. engagement over 0.8
        ({"member": facts(engagement_score=D("0.81"))}, "high_engagement", "1.005", "0"),
        # 8. still basic after 300 spent: +15 points
        (
            {"member": facts(on_entry_tier=True, lifetime_spend=D("300"))},
            "tier_stagnation_incentive",
            "1",
            "15",
        ),
    ],
)
def test_each_rule_fires_alone_past_its_threshold(kwargs, reason, multiplier, bonus):
    result = score(**kwargs)
    assert result.reasons == [reason]
    assert result.multiplier == D(multiplier)
    assert result.bonus_points == D(bonus)
    assert result.confidence == D("0.55")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount": "500"},
        {"member": facts(churn_risk=D("0.5"))},
        {"member": facts(last_purchase_at=NOW - timedelta(days=7))},
        {"module": "rides"},
        {"member": facts(lifetime_spend=D("10000"), on_entry_tier=False)},
        {"member": facts(engagement_score=D("0.8"))},
        {"member": facts(on_entry_tier=True, lifetime_spend=D("299.99"))},
        {"member": facts(on_entry_tier=False, lifetime_spend=D("5000"))},
    ],
)
def test_no_rule_fires_at_or_below_its_threshold(kwargs):
    assert score(**kwargs).reasons == []


def test_rules_add_up_and_confidence_is_capped():
    member = facts(
        churn_risk=D("0.9"),
        engagement_score=D("0.9"),
        lifetime_spend=D("20000"),
        on_entry_tier=True,
        last_purchase_at=NOW - timedelta(days=1),
        first_purchase_today=True,
    )
    result = score(member, amount="1000", module="eats")

    assert len(result.reasons) == 8
    # 1% + 2% + 0.5% + 1.5% + 1% + 0.5%
    assert result.multiplier == D("1.065")
    assert result.bonus_points == D("25")
    # 0.50 + 8 x 0.05 = 0.90, under the 0.95 cap; a lower cap applies.
    assert result.confidence == D("0.90")
    assert score(member, amount="1000", module="eats", confidence_max="0.8").confidence == D("0.8")


def test_program_overrides_replace_thresholds_and_bonuses():
    result = score(
        amount="150",
        module="rides",
        high_value_amount="100",
        high_value_bonus="0.05",
        promoted_modules=["rides", "shop"],
        cross_module_bonus="0.02",
    )
    assert result.reasons == ["high_value_transaction", "cross_module_promotion"]
    assert result.multiplier == D("1.07")


def test_disabled_sira_fires_nothing():
    member = facts(first_purchase_today=True, churn_risk=D("0.9"))
    result = score(member, amount="100000", module="eats", enabled=False)
    assert result.reasons == []
    assert result.multiplier == D("1")
    assert result.bonus_points == D("0")


def test_defaults_are_the_seed_thresholds():
    s = DEFAULT_SIRA_SETTINGS
    assert (s["high_value_amount"], s["high_value_bonus"]) == (D("500"), D("0.01"))
    assert (s["churn_high_risk"], s["churn_high_bonus"]) == (D("0.7"), D("0.02"))
    assert (s["churn_medium_risk"], s["churn_medium_bonus"]) == (D("0.5"), D("0.01"))
    assert (s["frequency_days"], s["frequency_bonus"]) == (7, D("0.005"))
    assert s["first_daily_purchase_points"] == D("10")
    assert (s["promoted_modules"], s["cross_module_bonus"]) == (["eats"], D("0.015"))
    assert (s["ltv_spend"], s["ltv_bonus"]) == (D("10000"), D("0.01"))
    assert (s["engagement_score"], s["engagement_bonus"]) == (D("0.8"), D("0.005"))
    assert (s["stagnation_spend"], s["stagnation_points"]) == (D("300"), D("15"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"unknown": 1},
        {"high_value_bonus": "-1"},
        {"high_value_amount": "abc"},
        {"high_value_amount": "NaN"},
        {"promoted_modules": "eats"},
        {"frequency_days": "soon"},
        # Past what an award can be computed or stored with: every purchase would fail.
        {"frequency_days": 1000000000},
        {"frequency_days": 1.9},
        {"frequency_days": True},
        {"first_daily_purchase_points": "1e30"},
        {"first_daily_purchase_points": "0.001"},
        {"high_value_bonus": "1e999999"},
        {"confidence_base": "1e30", "confidence_max": "1e30"},
        {"confidence_max": "7"},
        {"churn_high_risk": "1.5"},
        {"high_value_amount": "1e18"},
        {"ltv_bonus": True},
        # Not a boolean: "false" would be read as true.
        {"enabled": "false"},
        {"enabled": 0},
    ],
)
def test_invalid_overrides_raise_value_error(overrides):
    with pytest.raises(ValueError, match=r"SIRA setting|promoted_modules"):
        sira_settings_resolve(overrides)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "setting",
    [{"frequency_days": 1000000000}, {"first_daily_purchase_points": "1e30"},
     {"enabled": "false"}],
)  # fmt: skip
def test_a_setting_that_would_break_purchases_is_refused_when_saved(make_program, setting):
    from loyalty.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        make_program(sira_settings=setting)
    assert "sira_settings" in refused.value.errors


def test_overrides_accept_numbers_and_strings_as_decimals():
    resolved = sira_settings_resolve({"high_value_amount": 250, "ltv_bonus": "0.03"})
    assert resolved["high_value_amount"] == D("250")
    assert resolved["ltv_bonus"] == D("0.03")
    assert isinstance(resolved["ltv_bonus"], Decimal)
