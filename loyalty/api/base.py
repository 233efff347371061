"""What every loyalty API view shares: per-method permissions, input parsing, pagination."""

from rest_framework.pagination import CursorPagination
from rest_framework.views import APIView

from access.permissions import HasPermission


class LoyaltyApi(APIView):
    """A view whose methods each name their permission in `method_permissions`."""

    permission_classes = [HasPermission]
    method_permissions: dict[str, str | tuple[str, ...]] = {}


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
