"""The rows of the one-statement write: as Django would value them, and their JSON read back
by PostgreSQL to exactly the values given (no float, no rounded UTC offset)."""

import json
import uuid
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal as D

import pytest

from audit.models import AuditEntry
from loyalty.models import OutboxEvent, PointLot
from loyalty.services.ingestion.statement import _cte_insert, _cte_insert_values, _json_dumps

# Dakar's offset until 1912 was -1:09:44, Amsterdam's in 1937 +0:19:32.
DAKAR_1900 = datetime(1900, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo("Africa/Dakar"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (D("12.50"), "12.50"),
        (D("1E+3"), "1E+3"),
        (uuid.UUID(int=7), str(uuid.UUID(int=7))),
        (datetime(2026, 11, 28, 6, 1, 2, 3, tzinfo=UTC), "2026-11-28T06:01:02.000003+00:00"),
        (DAKAR_1900, DAKAR_1900.isoformat()),
        (
            datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=30))),
            "2026-01-01T00:00:00+00:00:30",
        ),
        (date(2026, 1, 2), "2026-01-02"),
        (time(10, 30), "10:30:00"),
    ],
)
def test_values_are_written_as_text_postgresql_reads_back_exactly(value, text):
    assert json.loads(_json_dumps({"v": value})) == {"v": text}


def test_what_orjson_refuses_is_written_by_json():
    row = {"big": 2**70, "points": D("1.5"), "at": date(2026, 1, 2), "doc": {"a": [1, None]}}
    assert json.loads(_json_dumps(row)) == {
        "big": 2**70,
        "points": "1.5",
        "at": "2026-01-02",
        "doc": {"a": [1, None]},
    }


def _row(insert, *args) -> dict:
    parts, params = [], []
    insert(*args, "x", parts, params)
    return params[0].obj


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (
            PointLot,
            {"balance_id": 1, "program_id": uuid.UUID(int=1), "entry_id": 2, "points": D("5"),
             "remaining": D("5"), "earned_at": datetime(2026, 1, 1, tzinfo=UTC),
             "expires_at": None},
        ),
        (
            OutboxEvent,
            {"merchant_id": "m_1", "program_id": uuid.UUID(int=1), "event_type": "e",
             "payload": {"a": "1"}},
        ),
        (
            AuditEntry,
            {"entity_type": "transaction", "entity_id": "1", "action": "a", "merchant_id": "m",
             "actor_id": "u", "actor_role": "r", "ip": None, "user_agent": "", "changes": {},
             "created_at": datetime(2026, 1, 1, tzinfo=UTC), "digest": "d"},
        ),
    ],
)  # fmt: skip
def test_a_row_of_values_is_the_row_of_the_instance(model, values):
    """Same columns in the same order (the statement's text), same values; a stamp (auto_now)
    and a callable default (the outbox id) differ only by the moment they were taken."""
    by_values = _row(_cte_insert_values, model, values)
    by_instance = _row(_cte_insert, model(**values))
    assert list(by_values) == list(by_instance)
    for column, value in by_values.items():
        if column == "created_at" and "created_at" not in values:
            assert abs(value - by_instance[column]) < timedelta(seconds=5)
        elif column == "id":
            assert isinstance(value, uuid.UUID)
        else:
            assert value == by_instance[column], column
