"""System checks of the loyalty settings (run by `manage.py check`, `migrate` and the server)."""

from django.conf import settings
from django.core.checks import Error, register

from .models import HOLD_TTL_SECONDS, VOUCHER_VALIDITY_DAYS


@register()
def program_defaults_check(app_configs, **kwargs) -> list[Error]:
    """The new programs' defaults from the environment are within a program's bounds (else
    every program created without its own value is refused, on a field its client never
    sent)."""
    errors = []
    for name, (low, high), code in (
        ("LOYALTY_HOLD_TTL_SECONDS", HOLD_TTL_SECONDS, "loyalty.E001"),
        ("LOYALTY_VOUCHER_VALIDITY_DAYS", VOUCHER_VALIDITY_DAYS, "loyalty.E002"),
    ):
        value = getattr(settings, name)
        if not low <= value <= high:
            errors.append(Error(f"{name} is {value}: from {low} to {high}.", id=code))
    return errors
