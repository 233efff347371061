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

In autocommit, the statements up to the pipeline's sync are one implicit transaction, which
the sync commits (PostgreSQL's extended protocol). `queued_pipeline(implicit_transaction=True)`
keeps a block that raises from committing (it sends BEGIN before the sync, `keep_open`), and
a block that swallowed a failed statement's error from ending as if it had committed.

This overrides two steps of psycopg's Pipeline (`_communicate_gen`, which sends the queued
commands and reads what results have arrived, and `_exit_gen`): psycopg is pinned, and
tests/loyalty/test_pipelined_path.py holds the behaviour to what the pipeline must do.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors, pq
from psycopg.generators import fetch


class _QueuedPipeline(psycopg.Pipeline):
    implicit_transaction = False  # the sync commits: see `queued_pipeline`

    def _communicate_gen(self):
        # Into libpq's output buffer, which it writes itself past 64 kB. The results are read
        # (and a failed command raises) when the pipeline next waits.
        while self.command_queue:
            self.command_queue.popleft()()
        return
        yield  # a generator, as psycopg drives it

    def _exit_gen(self):
        try:
            yield from super()._exit_gen()
        except errors.Error:
            # An error of the sync itself (committing the implicit transaction: a deferred
            # constraint, a serialization failure) takes the sync's place in psycopg's queue
            # and leaves the sync's own result unread: read it, or libpq cannot leave pipeline
            # mode and the connection is stuck.
            while self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                result = yield from fetch(self.pgconn)
                if result is not None and result.status == pq.ExecStatus.PIPELINE_SYNC:
                    break
            raise

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        swallowed = False
        if self.implicit_transaction:
            if exc_val is not None:
                keep_open(self._conn)
            else:
                # A statement failed and the block caught its error: the sync rolls back
                # what the block went on as if written, which must not end quietly.
                swallowed = self.pgconn.pipeline_status == pq.PipelineStatus.ABORTED
        super().__exit__(exc_type, exc_val, exc_tb)
        if swallowed:
            raise errors.PipelineAborted("a statement failed: the transaction was rolled back")


def keep_open(pg: psycopg.Connection) -> None:
    """Keeps the pipeline's sync from committing its implicit transaction: BEGIN turns it into
    an explicit one, even after some statements (PostgreSQL's BeginTransactionBlock), which
    the sync leaves open for the caller's rollback. A failed statement has aborted the
    pipeline: the sync rolls that transaction back by itself (the server would skip BEGIN)."""
    if pg.closed or pg.pgconn.pipeline_status == pq.PipelineStatus.ABORTED:
        return
    with pg.cursor() as cursor:
        cursor.execute("BEGIN", prepare=False)


@contextmanager
def queued_pipeline(
    pg: psycopg.Connection, *, implicit_transaction: bool = False
) -> Iterator[psycopg.Pipeline]:
    """`pg.pipeline()`, with each round trip's commands written together. Not nested. With
    `implicit_transaction` (the connection in autocommit, idle), the sync commits: a block
    that raises sends BEGIN before it (nothing commits, the caller rolls back), and a block
    that caught a failed statement's error raises PipelineAborted once the sync has rolled
    back."""
    if pg._pipeline is not None:
        raise RuntimeError("queued_pipeline() cannot run inside another pipeline")
    pipeline = pg._pipeline = _QueuedPipeline(pg)
    pipeline.implicit_transaction = implicit_transaction
    try:
        with pipeline:
            yield pipeline
    finally:
        pg._pipeline = None
