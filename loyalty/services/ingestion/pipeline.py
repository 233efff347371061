"""psycopg's pipeline mode, writing each round trip's commands to the server in one go.

psycopg's `Connection.pipeline()` writes every command to the socket as soon as it is queued:
BEGIN, then the balance lock; the write statement, then COMMIT. Each write wakes the server's
backend for a part of the round trip. Here a command goes into libpq's output buffer only, and
the buffer is written when the pipeline waits: for a result (`fetchone`, which psycopg
precedes with a flush request) or at its end (the sync). An earning then costs 7 system calls
instead of 20 (strace, per event: 3 sends, 2 polls, 2 receives, against 6.4, 11.4 and 2; the
third send is psycopg's flush request after the sync) and 7.8 % less CPU with 16 processes,
half of them on psycopg's own pipeline at the same time (`bench/ingest_pair.py`,
docs/BENCHMARKS.md).

This overrides one step of psycopg's Pipeline (`_communicate_gen`, which sends the queued
commands and reads what results have arrived): psycopg is pinned, and
tests/loyalty/test_pipelined_path.py holds the behaviour to what the pipeline must do.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class _QueuedPipeline(psycopg.Pipeline):
    def _communicate_gen(self):
        # Into libpq's output buffer, which it writes itself past 64 kB. The results are read
        # (and a failed command raises) when the pipeline next waits.
        while self.command_queue:
            self.command_queue.popleft()()
        return
        yield  # a generator, as psycopg drives it


@contextmanager
def queued_pipeline(pg: psycopg.Connection) -> Iterator[psycopg.Pipeline]:
    """`pg.pipeline()`, with each round trip's commands written together. Not nested."""
    if pg._pipeline is not None:
        raise RuntimeError("queued_pipeline() cannot run inside another pipeline")
    pipeline = pg._pipeline = _QueuedPipeline(pg)
    try:
        with pipeline:
            yield pipeline
    finally:
        pg._pipeline = None
