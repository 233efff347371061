"""Django's PostgreSQL backend, with a health check that costs no round trip when the
connection has nothing to say.

A connection kept between requests (CONN_MAX_AGE) is checked at the start of each request
(CONN_HEALTH_CHECKS). Django's check sends `SELECT 1`: one round trip and a statement for the
server on every request. A connection the server ended (restart, terminate, idle timeout, a
pooler closing it) has an error message and an end of stream waiting on its socket; an idle
connection has nothing. So: when the socket of an idle (not in a transaction) connection has
nothing to read and no error or hang-up, the connection is usable; otherwise Django's own
`SELECT 1` decides, as before. The one case neither can tell (the peer vanished without a
word) blocks `SELECT 1` as long as it blocks the request's first statement.
"""

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus

_SIGNS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
_SIGNS |= getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut its side down


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        connection = self.connection
        if connection is None or connection.closed:
            return False
        try:
            if connection.info.transaction_status == TransactionStatus.IDLE:
                poller = select.poll()
                poller.register(connection.pgconn.socket, _SIGNS)
                if not poller.poll(0):
                    return True  # idle, nothing pending: as it was left
        except Exception:  # noqa: S110 (any doubt: the round trip decides)
            pass
        return super().is_usable()
