"""Strict JSON parsing with a size limit.

Numbers parse to Decimal (never float), NaN/Infinity are refused, and a body larger than
`LOYALTY_API_MAX_BODY_BYTES` is refused with 413 even without a Content-Length header.
"""

import json
import re
from decimal import Decimal

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


# `json.loads(text, parse_float=..., parse_constant=...)` builds this decoder on every call;
# it also refuses a leading byte order mark with its own message, so such text still goes there.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_refuse_constant)


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.LOYALTY_API_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        try:
            text = raw.decode("utf-8")
            if text.startswith("\ufeff"):
                data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
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
