"""Strict JSON parsing with a size limit.

Numbers parse to Decimal (never float), NaN/Infinity are refused, so are numbers whose
exponent is far outside anything the API reads (MAX_NUMBER_EXPONENT), and a body larger than
`LOYALTY_API_MAX_BODY_BYTES` is refused with 413 even without a Content-Length header.
"""

import json
import re
from decimal import Decimal, InvalidOperation

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


# The largest power of ten (either sign) a JSON number with a fraction or an exponent may
# reach. Decimal fields take at most 20 digits and 8 places; metadata numbers are stored as
# floats (about 1e-308 to 1.8e308): 400 is beyond both, so nothing the API stores is refused.
# Unbounded, `1e1000000` overflows Decimal arithmetic and `1E+999999` written out in full is
# a megabyte of digits. JSON integers need no bound: Python's int parsing refuses more than
# 4,300 digits, and an integer's digits are all in the body.
MAX_NUMBER_EXPONENT = 400


def _parse_number(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation as exc:  # an exponent past Decimal's own limits
        raise ValueError(f"number out of range: {text[:40]}") from exc
    if abs(number.adjusted()) > MAX_NUMBER_EXPONENT:
        raise ValueError(f"number out of range: {text[:40]}")
    return number


# `json.loads(text, parse_float=..., parse_constant=...)` builds this decoder on every call;
# it also refuses a leading byte order mark with its own message, so such text still goes there.
_DECODER = json.JSONDecoder(parse_float=_parse_number, parse_constant=_refuse_constant)


def body_limit(view) -> int:
    """The largest body `view` reads: its `max_body_setting` (the API's views: the single
    body's, a batch's the largest), never past `LOYALTY_API_MAX_BODY_BYTES`."""
    largest = settings.LOYALTY_API_MAX_BODY_BYTES
    name = getattr(view, "max_body_setting", None)
    return largest if name is None else min(getattr(settings, name), largest)


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = body_limit((parser_context or {}).get("view"))
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        try:
            text = raw.decode("utf-8")
            if text.startswith("\ufeff"):
                data = json.loads(text, parse_float=_parse_number, parse_constant=_refuse_constant)
            else:
                data = _DECODER.decode(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ParseError(f"JSON parse error: {exc}") from exc
        if SURROGATE_ESCAPE.search(text):
            # A `\ud800` escape decodes to a lone surrogate, which no database text can hold;
            # only bodies with such escapes (emoji pairs, mostly) pay for this check.
            try:
                json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ParseError("JSON parse error: unpaired surrogate escape.") from exc
        return data
