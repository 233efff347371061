"""What every loyalty API view shares: per-method permissions, input parsing, pagination."""

import functools

from rest_framework.pagination import CursorPagination
from rest_framework.views import APIView

from access.permissions import HasPermission


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

    def get_authenticators(self):
        return _instances(self.authentication_classes)

    def get_parsers(self):
        return _instances(self.parser_classes)

    def get_renderers(self):
        return _instances(self.renderer_classes)

    def get_permissions(self):
        return _instances(self.permission_classes)

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


def validated(serializer_cls, data, **kwargs) -> dict:
    serializer = serializer_cls(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class CursorPage(CursorPagination):
    """Opaque cursors over a unique, monotonic ordering: stable while rows are added."""

    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200
    ordering = "-id"


def paginated(view, request, queryset, to_body, *, ordering: str = "-id"):
    paginator = CursorPage()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response([to_body(item) for item in page])
