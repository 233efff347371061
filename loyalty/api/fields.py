"""Strict parsing of wire values: decimals as strings (or JSON integers), aware ISO 8601
datetimes, bounded text without control characters, bounded JSON objects.

The parse functions raise ValueError with a message; the DRF fields below wrap them, and the
batch path calls them directly (1,000 items through full DRF serializers would cost more than
the ingestion itself).
"""

import math
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# [0-9], not \d: \d matches any script's digits, which Decimal() reads (Arabic-Indic "10": 10).
# Matched whole (fullmatch): `$` would let a trailing newline through.
DECIMAL_PATTERN = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,8})?")
# Printable text: no control characters (PostgreSQL refuses NUL; the rest is never wanted).
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Member ids travel in URL paths too, so no "/", and neither "." nor "..": URL clients (and
# Django's own absolute links, the pages' `next`) resolve such a segment away, landing on
# another resource.
MEMBER_ID_PATTERN = re.compile(r"^(?!\.\.?$)[^/\x00-\x1f\x7f]{1,128}$")
MAX_JSON_DEPTH = 8
MAX_JSON_BYTES = 8192


def parse_decimal(value, *, max_digits: int = 20, places: int = 2) -> Decimal:
    """A decimal from a string like "12500" or "0.25" (or a JSON integer); no exponents,
    no more than `places` decimals, no more than `max_digits` digits in all."""
    if isinstance(value, bool):
        raise ValueError('A decimal string is required, e.g. "12.50".')
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, Decimal):  # a JSON number (the parser never makes floats)
        if not value.is_finite():
            raise ValueError("A finite decimal is required.")
        value = format(value, "f")
    # Strict: no padding ("12 ", "12\n"), which Decimal() itself would accept.
    if not isinstance(value, str) or not DECIMAL_PATTERN.fullmatch(value):
        raise ValueError('A decimal string is required, e.g. "12.50".')
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError("A decimal string is required.") from exc
    exponent = number.as_tuple().exponent
    if -exponent > places and number != number.quantize(Decimal(1).scaleb(-places)):
        raise ValueError(f"At most {places} decimal places.")
    number = number.quantize(Decimal(1).scaleb(-places))
    digits = len(number.as_tuple().digits)
    if digits > max_digits:
        raise ValueError(f"At most {max_digits - places} digits before the decimal point.")
    return number


def parse_aware_datetime(value) -> datetime:
    """An ISO 8601 datetime with its UTC offset ("2026-11-27T10:00:00Z"); naive is refused."""
    # ASCII only: dateparse's fallback pattern uses \d, which matches any script's digits.
    # No padding either: dateparse's pattern ends in `$`, which lets a trailing newline by.
    if (
        not isinstance(value, str)
        or len(value) > 40
        or not value.isascii()
        or value != value.strip()
    ):
        raise ValueError("An ISO 8601 datetime with a UTC offset is required.")
    try:
        parsed = parse_datetime(value)
    except ValueError as exc:
        raise ValueError("Not a valid datetime.") from exc
    if parsed is None:
        raise ValueError("An ISO 8601 datetime with a UTC offset is required.")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("The datetime must carry its UTC offset (e.g. Z or +00:00).")
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError("The datetime is out of range.") from exc


def parse_text(value, *, max_length: int, required: bool = True, pattern=None) -> str:
    if value is None or value == "":
        if required:
            raise ValueError("This field is required.")
        return ""
    if not isinstance(value, str):
        raise ValueError("A string is required.")
    if len(value) > max_length:
        raise ValueError(f"At most {max_length} characters.")
    if CONTROL_CHARS.search(value):
        raise ValueError("Control characters are not allowed.")
    if pattern is not None and not pattern.match(value):
        raise ValueError("Invalid format.")
    return value


def json_safe(value, *, depth: int = 0):
    """`value` (parsed JSON) ready for a JSONField: Decimals to int/float, no NUL, bounded."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"Nested more than {MAX_JSON_DEPTH} levels.")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError("NUL characters are not allowed.")
            out[key] = json_safe(item, depth=depth + 1)
        return out
    if isinstance(value, list):
        return [json_safe(item, depth=depth + 1) for item in value]
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed.")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("Numbers must be finite.")
        if value == value.to_integral_value() and abs(value) < 2**63:
            return int(value)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("Number out of range.")
        return number
    return value  # int, bool, None


def parse_json_object(value, *, max_bytes: int = MAX_JSON_BYTES) -> dict:
    import json

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("A JSON object is required.")
    safe = json_safe(value)
    if len(json.dumps(safe)) > max_bytes:
        raise ValueError(f"At most {max_bytes} bytes of JSON.")
    return safe


class _ParsingField(serializers.Field):
    def to_internal_value(self, data):
        try:
            return self.parse(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class DecimalString(_ParsingField):
    """A decimal as a string on the wire, both ways; a JSON number is also read, exactly (the
    parser reads numbers as decimals). Its schema: access/schema.py `DecimalStringSchema`."""

    def __init__(self, *, max_digits: int = 20, places: int = 2, **kwargs):
        self.max_digits, self.places = max_digits, places
        super().__init__(**kwargs)

    def parse(self, data):
        return parse_decimal(data, max_digits=self.max_digits, places=self.places)

    def to_representation(self, value):
        return None if value is None else str(value)


@extend_schema_field(OpenApiTypes.DATETIME)
class AwareDateTime(_ParsingField):
    def parse(self, data):
        return parse_aware_datetime(data)

    def to_representation(self, value):
        return iso(value)


@extend_schema_field(
    {"type": "string", "maxLength": 128, "pattern": r"^(?!\.\.?$)[^/\x00-\x1f\x7f]+$"}
)
class MemberId(_ParsingField):
    def parse(self, data):
        return parse_text(data, max_length=128, pattern=MEMBER_ID_PATTERN)

    def to_representation(self, value):
        return value


class Text(serializers.CharField):
    """A CharField that also refuses control characters."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if CONTROL_CHARS.search(value):
            raise serializers.ValidationError("Control characters are not allowed.")
        return value


# ASCII digits, two for the month and the day, nothing around them.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class StrictDate(serializers.DateField):
    """A date written YYYY-MM-DD and nothing else. DRF's DateField falls back on dateparse's
    pattern, whose `\\d` matches any script's digits, which takes one-digit months and days,
    and whose `$` lets a trailing newline by."""

    def to_internal_value(self, value):
        if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
            self.fail("invalid", format="YYYY-MM-DD")
        return super().to_internal_value(value)


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObject(_ParsingField):
    def parse(self, data):
        return parse_json_object(data)

    def to_representation(self, value):
        return value


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, the wire format of every time."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
