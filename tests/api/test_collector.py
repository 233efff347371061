"""The cyclic garbage collector is paused while a batch runs, and only then."""

import gc
import threading

import pytest

from loyalty.api import events as events_api
from loyalty_project import collector
from loyalty_project.collector import collector_paused

from .test_ledger_api import event


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_inside_and_resumed_after_even_on_error():
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), collector_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_resumed_when_the_last_of_overlapping_sections_ends():
    first_inside, second_done, release_first = (threading.Event() for _ in range(3))
    seen = {}

    def first():
        with collector_paused():
            first_inside.set()
            release_first.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_inside.wait(5)
    with collector_paused():
        pass
    seen["after second"] = gc.isenabled()  # the first thread is still inside
    second_done.set()
    release_first.set()
    thread.join(5)
    assert seen["after second"] is False
    assert gc.isenabled()


def test_a_long_pause_collects_at_its_end(monkeypatch):
    monkeypatch.setattr(collector, "COLLECT_PAST", 100)
    with collector_paused():
        garbage = [[] for _ in range(1_000)]
        assert gc.get_count()[0] > 100
        del garbage
    assert gc.get_count()[0] < 100  # collected by the section's end


@pytest.mark.django_db
def test_a_batch_runs_with_the_collector_paused_a_single_event_does_not(api, funded, monkeypatch):
    seen = []
    real_batch, real_single = events_api.events_ingest_batch, events_api.event_ingest

    def batch(*args, **kwargs):
        seen.append(("batch", gc.isenabled()))
        return real_batch(*args, **kwargs)

    def single(*args, **kwargs):
        seen.append(("single", gc.isenabled()))
        return real_single(*args, **kwargs)

    monkeypatch.setattr(events_api, "events_ingest_batch", batch)
    monkeypatch.setattr(events_api, "event_ingest", single)
    real_prefaced = events_api.event_ingest_prefaced  # PostgreSQL's path of a single event

    def prefaced(*args, **kwargs):
        seen.append(("single", gc.isenabled()))
        return real_prefaced(*args, **kwargs)

    monkeypatch.setattr(events_api, "event_ingest_prefaced", prefaced)
    client = api("system")
    items = [{**event(funded, member_id="c1"), "idempotency_key": "c-1"}]
    assert client.post("/api/v1/events/batch", {"events": items}).status_code == 200
    assert client.post("/api/v1/events", event(funded, member_id="c2")).status_code == 201
    assert seen == [("batch", False), ("single", True)]
    assert gc.isenabled()
