"""Real threads for the PostgreSQL race tests, each on its own database connection."""

import threading
import time
from collections import Counter

from django.db import connection

JOIN_TIMEOUT = 60  # seconds; a thread still running then is taken as a deadlock


def run_parallel(count: int, work) -> list:
    """Runs `work(i)` in `count` threads released together; returns each result or exception.

    Every exception a thread raises (BaseException included: a failed assert, pytest.fail) is
    recorded as its result for the test to inspect; a thread still running after JOIN_TIMEOUT
    fails the test."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # the test inspects what each thread got
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert stuck == [], f"threads {stuck} did not finish: deadlock or lock wait"
    return results


def outcomes(results) -> Counter:
    return Counter(type(r).__name__ for r in results)


def start_thread(results: dict, name: str, work) -> threading.Thread:
    """Starts `work()` on a thread of its own connection; `results[name]` gets its return value
    or the exception it raised. Join it with `join_all`."""

    def run():
        try:
            results[name] = work()
        except BaseException as exc:  # the test inspects what each thread got
            results[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish: deadlock"


def lock_waiters() -> int:
    """Transactions of this database waiting for a lock right now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def wait_for_lock_waiters(count: int = 1, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while lock_waiters() < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} transaction(s) waiting for a lock")
        time.sleep(0.05)
