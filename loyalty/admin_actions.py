"""The one loop every ops console action runs: call a service per selected object, and turn a
refusal into a message.

Each call is its own service transaction, so one refused object leaves the others done. A
`DomainError` (a hold captured meanwhile, a closed program) is the service saying no: it
becomes an error message naming the object, never a 500. Anything else is a bug and surfaces.
"""

from collections.abc import Callable, Iterable
from typing import TypeVar

from django.contrib import messages

from .errors import DomainError

T = TypeVar("T")


def run_each(
    model_admin,
    request,
    items: Iterable[T],
    fn: Callable[[T], str | None],
    *,
    name: Callable[[T], str] = str,
    summary: Callable[[int], str] | None = None,
) -> int:
    """Calls `fn(item)` for each item; returns how many returned a message (succeeded).

    `fn` returns the success message, or None when it did nothing and said why itself (an
    operation left waiting for approval). With `summary`, one message with the count replaces
    the per-item success messages.
    """
    done = 0
    for item in items:
        try:
            message = fn(item)
        except DomainError as error:
            model_admin.message_user(
                request, f"{name(item)}: {error.detail} ({error.code})", messages.ERROR
            )
            continue
        if message is None:
            continue
        done += 1
        if summary is None:
            model_admin.message_user(request, message, messages.SUCCESS)
    if summary is not None:
        model_admin.message_user(request, summary(done))
    return done
