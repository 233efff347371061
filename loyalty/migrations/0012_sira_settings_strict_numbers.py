"""SIRA settings' numbers are now refused in any form but plain ASCII decimals ("0.05"):
settings stored before in another form ("1e1", " 10", another script's digits, "-0") are
rewritten to that form, with the same value, so that the programs holding them keep scoring
(`sira_settings_resolve` would refuse them at every purchase)."""

import math
import re
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from django.db import migrations

PLAIN = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")
PLACES = Decimal("1e-20")


def plain(value):
    """A stored text (or a number past 20 places) as a plain decimal of the same value, to
    20 places, when it is one; anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
        if PLAIN.fullmatch(format(number, "f")):
            return value  # read as it is (`sira.scoring._setting_decimal`)
    elif not isinstance(value, str) or PLAIN.fullmatch(value):
        return value
    else:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return value
    if not number.is_finite() or number < 0:
        return value
    if number.as_tuple().exponent < -20:
        number = number.quantize(PLACES, rounding=ROUND_DOWN)
    text = format(abs(number).normalize(), "f")  # abs: "-0" is 0
    return text if PLAIN.fullmatch(text) else value


def sira_numbers_plain(apps, schema_editor):
    Program = apps.get_model("loyalty", "Program")
    for program in Program.objects.exclude(sira_settings={}).only("id", "sira_settings"):
        settings = program.sira_settings
        if not isinstance(settings, dict):
            continue
        fixed = {key: plain(value) for key, value in settings.items()}
        if fixed != settings:
            Program.objects.filter(pk=program.pk).update(sira_settings=fixed)


class Migration(migrations.Migration):
    dependencies = [("loyalty", "0011_campaign_started_at")]

    operations = [migrations.RunPython(sira_numbers_plain, migrations.RunPython.noop)]
