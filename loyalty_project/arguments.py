"""Argument types the management commands share."""

import argparse


def findings_limit(text: str) -> int:
    """A verify command's `--limit`: a whole number, 1 or more (0 would show no finding and
    report OK on any data)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number is required, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value
