"""System checks of the API's settings (run by `manage.py check`, `migrate` and the server)."""

from django.conf import settings
from django.core.checks import Error, register

MIN_IDEMPOTENCY_TTL_HOURS = 24  # DESIGN.md: keys kept at least 24 hours


@register()
def idempotency_ttl_check(app_configs, **kwargs) -> list[Error]:
    hours = settings.LOYALTY_IDEMPOTENCY_TTL_HOURS
    if hours < MIN_IDEMPOTENCY_TTL_HOURS:
        return [
            Error(
                f"LOYALTY_IDEMPOTENCY_TTL_HOURS is {hours}: idempotency keys are kept at least "
                f"{MIN_IDEMPOTENCY_TTL_HOURS} hours, so that a client's retry within a day is "
                "answered from the first request, never run again.",
                id="access.E001",
            )
        ]
    return []
