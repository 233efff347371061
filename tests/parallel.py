"""Real threads for the PostgreSQL race tests, each on its own database connection."""

import threading
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
