"""Points and money arithmetic: the one place where amounts are quantized.

Points carry 2 decimal places and earned points round down. Money is quantized to its
currency's ISO 4217 minor unit (XOF and XAF have none, USD has 2), at most the 2 places the
money columns hold (`models.money_field`): TND's third place (millimes) is not kept, so a
budget spread, charged and checked in TND is what is stored.
"""

from decimal import ROUND_CEILING, ROUND_DOWN, Context, Decimal, InvalidOperation

# ISO 4217 minor units of the currencies programs may use.
CURRENCY_EXPONENTS: dict[str, int] = {
    "XOF": 0, "XAF": 0, "GNF": 0, "RWF": 0, "UGX": 0, "JPY": 0, "KRW": 0,
    "USD": 2, "EUR": 2, "GBP": 2, "CAD": 2, "CHF": 2, "NGN": 2, "GHS": 2, "KES": 2,
    "MAD": 2, "TND": 3, "ZAR": 2, "EGP": 2, "CDF": 2, "MGA": 2, "INR": 2, "CNY": 2,
    "AED": 2, "BRL": 2,
}  # fmt: skip

POINTS_QUANTUM = Decimal("0.01")
ZERO = Decimal("0.00")
# Wide enough for the exact product (or proportion) of any amounts, rates and points the
# fields allow, before it is rounded down once: the default 28 digits round past ~10^26.
EXACT = Context(prec=80)


def currency_choices() -> list[tuple[str, str]]:
    return [(code, code) for code in sorted(CURRENCY_EXPONENTS)]


def money_quantum(currency: str) -> Decimal:
    return _QUANTA[currency]


# The places of the money columns.
MONEY_PLACES = 2

# Made once: every event asks for its currency's a few times (0.3 us each to make).
_QUANTA = {
    code: Decimal(1).scaleb(-min(exponent, MONEY_PLACES))
    for code, exponent in CURRENCY_EXPONENTS.items()
}


def points_floor(value: Decimal) -> Decimal:
    """Earned points round down to the cent of a point."""
    return value.quantize(POINTS_QUANTUM, rounding=ROUND_DOWN)


def money_ceil(value: Decimal, currency: str) -> Decimal:
    """A cost charged to a budget rounds up, so the budget is never exceeded by rounding."""
    return value.quantize(money_quantum(currency), rounding=ROUND_CEILING)


def money_floor(value: Decimal, currency: str) -> Decimal:
    return value.quantize(money_quantum(currency), rounding=ROUND_DOWN)


def is_exact_money(value: Decimal, currency: str) -> bool:
    """True when `value` needs no more places than the currency's minor unit."""
    try:
        return value == value.quantize(money_quantum(currency))
    except InvalidOperation:
        return False


def is_exact_points(value: Decimal) -> bool:
    try:
        return value == value.quantize(POINTS_QUANTUM)
    except InvalidOperation:
        return False


# Points and money columns are NUMERIC(20,2): anything from 10^18 up cannot be stored.
LEDGER_LIMIT = Decimal(10) ** 18


def fits_ledger(value: Decimal) -> bool:
    """A finite number the ledger's NUMERIC(20,2) columns can hold (NaN and infinities
    cannot be compared, so they must be turned away before any arithmetic)."""
    return value.is_finite() and abs(value) < LEDGER_LIMIT


def points_cost(points: Decimal, *, point_value: Decimal, currency: str) -> Decimal:
    """The money a budget is charged for `points`."""
    return money_ceil(points * point_value, currency)


def points_affordable(budget: Decimal, *, point_value: Decimal) -> Decimal:
    """The most points whose cost fits in `budget` (money at the currency's minor unit)."""
    return points_floor(budget / point_value)
