"""What every loyalty API view shares: per-method permissions, input parsing, pagination."""

import binascii
import functools
import hashlib
from base64 import b64decode, b64encode
from datetime import UTC, datetime
from urllib import parse

from django.core.exceptions import ValidationError
from django.http import QueryDict
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from access.permissions import HasPermission
from loyalty.errors import DomainError, ValidationFailed

from .serializers import EmptyInputSerializer


def _instances(classes) -> list:
    """One instance of each class (built once per list of classes)."""
    try:
        return list(_shared(tuple(classes)))
    except TypeError:  # an unhashable entry (a composed DRF permission): new ones
        return [cls() for cls in classes]


@functools.cache
def _shared(classes: tuple) -> tuple:
    return tuple(cls() for cls in classes)


class LoyaltyApi(APIView):
    """A view whose methods each name their permission in `method_permissions`.

    The authenticators, parsers, renderers and permissions of the API hold no state of their
    own: one instance of each serves every request, where DRF would build each anew per
    request. The headers every answer of a view carries (`Allow`) are computed once per view
    class."""

    permission_classes = [HasPermission]
    method_permissions: dict[str, str | tuple[str, ...]] = {}
    # No OPTIONS: DRF's answer describes a view to whoever asks, and the schema does that (a
    # method the endpoint does not take is 405 `method_not_allowed`).
    http_method_names = [m for m in APIView.http_method_names if m != "options"]
    # The settings name of the largest body it reads (access.parsers.body_limit).
    max_body_setting = "LOYALTY_API_MAX_SINGLE_BODY_BYTES"

    def get_authenticators(self):
        return _instances(self.authentication_classes)

    def get_parsers(self):
        return _instances(self.parser_classes)

    def get_renderers(self):
        return _instances(self.renderer_classes)

    def get_permissions(self):
        return _instances(self.permission_classes)

    def dispatch(self, request, *args, **kwargs):
        response = super().dispatch(request, *args, **kwargs)
        if callable(getattr(response, "render", None)):
            response.render()  # as Django's handler would next (then a no-op there)
        _cycles_cut(self, response)
        return response

    @property
    def default_response_headers(self):
        # Read by `dispatch`, after `setup` gave the view its `head`: the same for every
        # request of the class (and of what `as_view` may set). A copy, which
        # `finalize_response` may change.
        key = (type(self), tuple(self.http_method_names), tuple(self.renderer_classes))
        headers = _DEFAULT_HEADERS.get(key)
        if headers is None:
            headers = _DEFAULT_HEADERS[key] = super().default_response_headers
        return dict(headers)


_DEFAULT_HEADERS: dict[tuple, dict[str, str]] = {}


def _cycles_cut(view: APIView, response) -> None:
    """Cuts the reference cycles DRF leaves once a request is answered: its request refers to
    itself and to the view through `parser_context`, the view to the request and to the
    response, the response to both through `renderer_context`. Left in place, they keep
    everything the request made (a batch's parsed body: ~4,000 dicts and lists) for the
    cyclic collector, which then walks it through two generations before freeing it; cut,
    it is freed by reference counting as the request ends."""
    drf_request = getattr(view, "request", None)
    if drf_request is not None:
        drf_request.parser_context = {}
    if isinstance(response, Response):  # (a replay's stored answer is a plain HttpResponse)
        response.renderer_context = None
    view.__dict__.pop("response", None)


def validated(serializer_cls, data, **kwargs) -> dict:
    serializer = serializer_cls(data=data, **kwargs)
    if isinstance(data, QueryDict):
        _query_checked(serializer, data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# Read by the paginator and the content negotiation, not by a list's filters.
_LIST_PARAMS = {"cursor", "limit", "format"}


def _query_checked(serializer, params: QueryDict) -> None:
    """A list's query holds its own filters once each: a filter it does not have (a
    misspelling, `program_id` for `program`) and a one-value filter given twice are each a
    400 naming it, where DRF would ignore the first and read the last of the second, and the
    caller would take an unfiltered or another list for the one asked."""
    errors = {
        name: ["Not a filter of this list."]
        for name in params
        if name not in serializer.fields and name not in _LIST_PARAMS
    }
    errors.update(
        (name, ["Given more than once; this parameter takes one value."])
        for name, field in serializer.fields.items()
        if not isinstance(field, serializers.ListField | serializers.MultipleChoiceField)
        and len(params.getlist(name)) > 1
    )
    if errors:
        raise ValidationFailed(errors=errors)


def no_input(request) -> None:
    """Refuses a body on an action that takes none: no body, `{}` or `null` (400 otherwise)."""
    validated(EmptyInputSerializer, {} if request.data is None else request.data)


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    http_status = 400
    title = "Invalid pagination cursor"


class CursorPage(CursorPagination):
    """Opaque cursors over an ordering made unique by its last field: stable while rows are
    added.

    A cursor this API did not write is refused (400 `invalid_cursor`): one that does not
    decode, and one whose position is not a value of the ordering's field (DRF's own check
    stops at decoding; the position then went into the query as it was, a 500)."""

    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200
    ordering = "-id"

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        self._list = _list_token(request, self.cursor_query_param, self.page_size_query_param)
        page = super().paginate_queryset(queryset, request, view=view)
        self.base_url = _page_url(request)
        return page

    def encode_cursor(self, cursor):
        """DRF's cursor, plus the list it belongs to (`l`: its path and filters), so that it
        is refused on another list or with other filters rather than cut that list at a
        position of this one."""
        tokens = {"l": self._list}
        if cursor.offset != 0:
            tokens["o"] = str(cursor.offset)
        if cursor.reverse:
            tokens["r"] = "1"
        if cursor.position is not None:
            tokens["p"] = cursor.position
        encoded = b64encode(parse.urlencode(tokens).encode("ascii")).decode("ascii")
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def get_page_size(self, request):
        limit = request.query_params.get(self.page_size_query_param)
        if limit is not None and not limit.isascii():
            # int() reads any script's digits (Arabic-Indic "10" is 10): such a limit is as
            # invalid as "abc", which DRF answers with the default size.
            return self.page_size
        return super().get_page_size(request)

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        tokens = None if encoded is None else _cursor_tokens(encoded)
        if encoded is not None and tokens is None:
            # DRF's decoding skips what is not base64 and what is not one of its fields: most
            # junk would read as the first page.
            raise InvalidCursor("The cursor does not decode; use `next` or `previous`.")
        # (A cursor written before cursors named their list has no `l`.)
        if tokens and tokens.get("l", [self._list])[0] != self._list:
            raise InvalidCursor(
                "The cursor belongs to another list, or to other filters; use `next` or "
                "`previous` of this one."
            )
        try:
            cursor = super().decode_cursor(request)
        except NotFound as exc:
            raise InvalidCursor("The cursor does not decode; use `next` or `previous`.") from exc
        if cursor is not None and not self._position_valid(cursor.position):
            raise InvalidCursor("The cursor's position is invalid; use `next` or `previous`.")
        return cursor

    def _position_valid(self, position: str | None) -> bool:
        if position is None:  # the first page, read backwards: no position
            return True
        if not position.isascii():  # int() and dateparse read other scripts' digits
            return False
        field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
        try:
            value = field.to_python(position)
            field.run_validators(value)  # integers: the column's range
            if isinstance(value, datetime):
                # The positions written are aware; a naive one would be read in the server's
                # zone. Out of range once in UTC: an OverflowError in the query.
                value.astimezone(UTC)
                return value.tzinfo is not None
        except (ValidationError, OverflowError, ValueError):
            return False
        return value is not None


def _cursor_tokens(encoded: str) -> dict[str, list[str]] | None:
    """The fields of a cursor this API writes (strict base64 of a query string of DRF's
    fields and `l`, each at most once), or None for anything else."""
    try:
        text = b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
    except (binascii.Error, ValueError):  # not ASCII, not base64
        return None
    tokens = parse.parse_qs(text, keep_blank_values=True)
    if set(tokens) <= {"l", "o", "r", "p"} and all(len(v) == 1 for v in tokens.values()):
        return tokens
    return None


def _page_url(request) -> str:
    """The request's absolute URL, for its pages' links. Not `build_absolute_uri()`, which
    resolves "." and ".." path segments (a member named so before such ids were refused):
    `/members/../transactions` would link to `/transactions`. Such segments go escaped."""
    path, _, query = request.get_full_path().partition("?")
    segments = [_DOT_SEGMENTS.get(segment, segment) for segment in path.split("/")]
    url = request.build_absolute_uri("/").removesuffix("/") + "/".join(segments)
    return f"{url}?{query}" if query else url


_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}


def _list_token(request, *skipped: str) -> str:
    """The list a request pages through: its path and its filters (the query but the cursor
    and the page size), as a short digest."""
    filters = sorted(
        (name, value)
        for name, values in request.query_params.lists()
        if name not in skipped
        for value in values
    )
    text = f"{request.path}?{parse.urlencode(filters)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def paginated(view, request, queryset, to_body, *, ordering: str | tuple[str, ...] = "-id"):
    """A page of `queryset` in `ordering`, whose first field is the cursor's position. When
    that field is not unique (`created_at`), a unique one must follow (`id`): the cursor
    steps past rows sharing a position by counting them, which holds only if they always
    come back in the same order."""
    paginator = CursorPage()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response([to_body(item) for item in page])
