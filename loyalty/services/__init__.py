"""Every write of the loyalty domain. Entry points own their transaction (durable=True)."""

from .ingestion import EventInput, IngestResult, event_ingest
from .programs import (
    TierInput,
    balance_set_frozen,
    program_create,
    program_set_status,
    program_update,
)
from .redemptions import (
    redemption_capture,
    redemption_expire,
    redemption_hold,
    redemption_hold_or_replay,
    redemption_release,
    redemptions_expire_due,
    voucher_redeem,
    vouchers_expire_due,
)

__all__ = [
    "EventInput",
    "IngestResult",
    "TierInput",
    "balance_set_frozen",
    "event_ingest",
    "program_create",
    "program_set_status",
    "program_update",
    "redemption_capture",
    "redemption_expire",
    "redemption_hold",
    "redemption_hold_or_replay",
    "redemption_release",
    "redemptions_expire_due",
    "voucher_redeem",
    "vouchers_expire_due",
]
