"""SIRA scoring at ingestion: eight rules that raise a purchase's earn multiplier or add points.

The rules and thresholds are the seed's (`siraScoreForUser`); each program can override any
value through `Program.sira_settings`. Thresholds are amounts in the program's currency.
The score is a pure function of the member's state and the purchase, so it needs no query.
"""

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

D = Decimal
ZERO = D("0")
ONE = D("1")
HALF = D("0.50")

DEFAULT_SIRA_SETTINGS: dict[str, object] = {
    "enabled": True,
    # 1. High-value transaction boost.
    "high_value_amount": D("500"),
    "high_value_bonus": D("0.01"),
    # 2. Churn prevention.
    "churn_high_risk": D("0.7"),
    "churn_high_bonus": D("0.02"),
    "churn_medium_risk": D("0.5"),
    "churn_medium_bonus": D("0.01"),
    # 3. Frequency: a purchase within N days of the previous one.
    "frequency_days": 7,
    "frequency_bonus": D("0.005"),
    # 4. First purchase of the member's day (program time zone).
    "first_daily_purchase_points": D("10"),
    # 5. Cross-module promotion.
    "promoted_modules": ["eats"],
    "cross_module_bonus": D("0.015"),
    # 6. Customer lifetime value.
    "ltv_spend": D("10000"),
    "ltv_bonus": D("0.01"),
    # 7. Engagement.
    "engagement_score": D("0.8"),
    "engagement_bonus": D("0.005"),
    # 8. Tier stagnation: still on the lowest tier (the seed's "basic") after this much spend.
    "stagnation_spend": D("300"),
    "stagnation_points": D("15"),
    # Confidence: a base plus a step per rule that fired, capped.
    "confidence_base": D("0.50"),
    "confidence_step": D("0.05"),
    "confidence_max": D("0.95"),
}

DECIMAL_SETTINGS = {k for k, v in DEFAULT_SIRA_SETTINGS.items() if isinstance(v, Decimal)}
# The range of each kind of value: a rate added to the earn multiplier, a share (a churn risk,
# an engagement score, a confidence), points added to an award (at most 2 places), an amount
# of the program's currency, days. Past them an award could not be computed or stored, and
# every purchase of the program would fail.
POINTS_SETTINGS = {"first_daily_purchase_points", "stagnation_points"}
SHARE_SETTINGS = {
    "churn_high_risk", "churn_medium_risk", "engagement_score",
    "confidence_base", "confidence_step", "confidence_max",
}  # fmt: skip
AMOUNT_SETTINGS = {"high_value_amount", "ltv_spend", "stagnation_spend"}
MAX_RATE = D("10")
MAX_POINTS = D("1000000000")
MAX_AMOUNT = D("1000000000000000")
MAX_FREQUENCY_DAYS = 3650


def sira_settings_resolve(overrides: dict | None) -> dict:
    """Program overrides on top of the defaults; unknown keys and bad values raise ValueError."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError("SIRA settings are a JSON object of setting: value")
    settings = dict(DEFAULT_SIRA_SETTINGS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_SIRA_SETTINGS:
            raise ValueError(f"unknown SIRA setting {key!r}")
        if key in DECIMAL_SETTINGS:
            value = _setting_decimal(key, value)
        elif key == "enabled":
            if not isinstance(value, bool):
                raise ValueError("SIRA setting 'enabled' must be true or false")
        elif key == "frequency_days":
            if type(value) is not int or not 0 <= value <= MAX_FREQUENCY_DAYS:
                raise ValueError(
                    f"SIRA setting 'frequency_days' must be whole days, 0 to {MAX_FREQUENCY_DAYS}"
                )
        elif key == "promoted_modules" and (
            not isinstance(value, list) or not all(isinstance(m, str) for m in value)
        ):
            raise ValueError("promoted_modules must be a list of module names")
        settings[key] = value
    return settings


# A setting's number as the wire format writes decimals: ASCII digits, an optional fraction;
# no sign (none may be negative), exponent, padding nor another script's digits, all of
# which Decimal() would take.
_SETTING_NUMBER = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")


def _setting_decimal(key: str, value) -> Decimal:
    # A JSON number arrives as an int or a float, written out in full (0.00005, whose repr
    # is "5e-05"); a float's shortest repr is the number it was sent as.
    text = value  # refused below unless a plain decimal text
    if type(value) is int:
        text = str(value)
    elif type(value) is float and math.isfinite(value):
        text = format(D(repr(value)), "f")
    elif isinstance(value, Decimal) and value.is_finite():  # from Python callers
        text = format(value, "f")
    if not isinstance(text, str) or not _SETTING_NUMBER.fullmatch(text):
        raise ValueError(
            f'SIRA setting {key!r} must be a decimal like "0.05" (ASCII digits, no exponent)'
        )
    number = D(text)
    if key in SHARE_SETTINGS:
        top = ONE
    elif key in POINTS_SETTINGS:
        top = MAX_POINTS
    elif key in AMOUNT_SETTINGS:
        top = MAX_AMOUNT
    else:
        top = MAX_RATE
    if not number.is_finite() or not ZERO <= number <= top:
        raise ValueError(f"SIRA setting {key!r} must be from 0 to {top}")
    if key in POINTS_SETTINGS and number != number.quantize(D("0.01")):
        raise ValueError(f"SIRA setting {key!r} takes points with at most 2 decimal places")
    return number


@dataclass(frozen=True)
class MemberFacts:
    """What the rules read of a member, taken before this purchase is applied."""

    churn_risk: Decimal
    engagement_score: Decimal
    lifetime_spend: Decimal
    on_entry_tier: bool  # the program's lowest tier (the seed's "basic")
    last_purchase_at: datetime | None
    first_purchase_today: bool


@dataclass
class SiraScore:
    multiplier: Decimal = ONE
    bonus_points: Decimal = ZERO
    reasons: list[str] = field(default_factory=list)
    confidence: Decimal = HALF

    def as_dict(self) -> dict:
        return {
            "multiplier": decimal_str(self.multiplier),
            "bonus_points": str(self.bonus_points.quantize(D("0.01"))),
            "reasons": list(self.reasons),
            "confidence": str(self.confidence.quantize(D("0.01"))),
        }


def decimal_str(value: Decimal) -> str:
    """At least two places, more only when they carry something ("1.00", "1.015")."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def sira_score_purchase(
    *, member: MemberFacts, amount: Decimal, module: str, now: datetime, settings: dict
) -> SiraScore:
    """The seed's eight rules; each one that fires adds to the multiplier or the bonus points."""
    score = SiraScore(confidence=settings["confidence_base"])
    if not settings["enabled"]:
        return score
    bonus_rate = D("0")

    def fire(reason: str, *, rate: Decimal = ZERO, points: Decimal = ZERO) -> None:
        nonlocal bonus_rate
        bonus_rate += rate
        score.bonus_points += points
        score.reasons.append(reason)

    if amount > settings["high_value_amount"]:
        fire("high_value_transaction", rate=settings["high_value_bonus"])
    if member.churn_risk > settings["churn_high_risk"]:
        fire("churn_prevention_high", rate=settings["churn_high_bonus"])
    elif member.churn_risk > settings["churn_medium_risk"]:
        fire("churn_prevention_medium", rate=settings["churn_medium_bonus"])
    if member.last_purchase_at and now - member.last_purchase_at < timedelta(
        days=settings["frequency_days"]
    ):
        fire("frequent_purchaser", rate=settings["frequency_bonus"])
    if member.first_purchase_today and settings["first_daily_purchase_points"] > 0:
        fire("first_daily_purchase", points=settings["first_daily_purchase_points"])
    if module and module in settings["promoted_modules"]:
        fire("cross_module_promotion", rate=settings["cross_module_bonus"])
    if member.lifetime_spend > settings["ltv_spend"]:
        fire("high_lifetime_value", rate=settings["ltv_bonus"])
    if member.engagement_score > settings["engagement_score"]:
        fire("high_engagement", rate=settings["engagement_bonus"])
    if member.on_entry_tier and member.lifetime_spend >= settings["stagnation_spend"]:
        fire("tier_stagnation_incentive", points=settings["stagnation_points"])

    score.multiplier = D("1") + bonus_rate
    score.confidence = min(
        settings["confidence_base"] + settings["confidence_step"] * len(score.reasons),
        settings["confidence_max"],
    )
    return score
