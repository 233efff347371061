"""The cyclic garbage collector is paused while a batch runs, and only then."""

import gc
import io
import json
import sys
import threading
import uuid
from collections import Counter

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

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


def _wsgi_call(
    handler: WSGIHandler, path: str, body: bytes | None, auth: str, key: str | None = None
) -> int:
    """A request through Django's WSGI handler, as the web server makes it (the test client
    keeps each response and makes cycles of its own around it)."""
    environ = {
        "REQUEST_METHOD": "GET" if body is None else "POST", "PATH_INFO": path,
        "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "testserver", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "testserver",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body or b"")),
        "HTTP_AUTHORIZATION": auth, "HTTP_IDEMPOTENCY_KEY": key or f"k-{uuid.uuid4()}",
        "wsgi.input": io.BytesIO(body or b""), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "wsgi.version": (1, 0),
    }  # fmt: skip
    statuses = []
    # As the test client: the test's transaction keeps its connection across the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = handler(environ, lambda status, _, exc_info=None: statuses.append(status))
        b"".join(chunks)
        chunks.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return int(statuses[0].split()[0])


@pytest.mark.django_db
def test_an_answered_event_request_leaves_nothing_for_the_collector(funded, make_token):
    """DRF's request, view and response refer to each other: left so, every request's
    objects (a batch's 1,000 parsed events) wait for the cyclic collector to walk them through
    its generations before freeing them. Once answered, nothing of an ingestion request is
    left in a cycle. (DRF's serializers, which the reads use, are cycles of their own.)"""
    auth = "Bearer " + make_token(("system",))
    items = [
        {**event(funded, member_id=f"g{i}", reference=f"o-{i}"), "idempotency_key": f"g-{i}"}
        for i in range(50)
    ]
    batch = json.dumps({"events": items}).encode()
    requests = [
        ("/api/v1/events/batch", batch, "batch-1", 200),
        ("/api/v1/events/batch", batch, "batch-1", 200),  # its replay, the stored answer
        ("/api/v1/events", json.dumps(event(funded, member_id="g-single")).encode(), None, 201),
        ("/api/v1/events", b'{"program_id": "not-a-uuid"}', None, 400),  # a refusal
    ]
    handler = WSGIHandler()  # (its middleware chain is a cycle of its own, kept for the test)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    try:
        for path, body, key, status in requests:
            assert _wsgi_call(handler, path, body, auth, key) == status, path
            gc.collect()
            left = [type(thing).__name__ for thing in gc.garbage]
            gc.garbage.clear()
            assert left == [], (path, Counter(left).most_common(8))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
