"""The Procfile's `web` process serves the app: the health check, the API's problem answers
and the admin's static files (whitenoise), through the production web server (uWSGI)."""

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _web_command() -> str:
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )
    return line.removeprefix("web:").strip()


@pytest.fixture
def web_server(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DEBUG": "True",  # static files from the apps (no collectstatic in a test)
        "LOG_LEVEL": "WARNING",
    }
    # The Procfile's command as a shell runs it (its ${VAR:-default} expansions included).
    proc = subprocess.Popen(  # noqa: S602
        _web_command(), shell=True, cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the web process did not start: {proc.stderr.read()!r}")
                time.sleep(0.2)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()  # headers: any case
    finally:
        conn.close()


def test_the_procfile_web_process_serves_the_app(web_server):
    port, _ = web_server
    assert "uwsgi" in _web_command()
    status, headers, body = _request(port, "GET", "/healthz")
    assert (status, body) == (200, b'{"status": "ok"}')
    # One request per connection: the next goes to whichever process is idle.
    assert headers["Connection"] == "close"

    # An API write without a credential: the problem answer.
    status, headers, body = _request(
        port,
        "POST",
        "/api/v1/events",
        body=b"{}",
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
    )
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert b'"code":"not_authenticated"' in body.replace(b" ", b"")

    status, headers, body = _request(port, "GET", "/static/admin/css/base.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert len(body) > 1000


def test_sigterm_stops_the_web_process(web_server):
    """A deployment stops the web process with SIGTERM (to its process group), which uWSGI by
    default takes as "reload": here it finishes the requests it has and exits."""
    port, proc = web_server
    assert _request(port, "GET", "/healthz")[0] == 200
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)  # the shell the Procfile line runs in
    deadline = time.monotonic() + 15
    while True:  # the server's master and workers, gone: the group is empty
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the web process is still running"
        time.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # Shut down, not reloaded (a reload re-runs the interpreter, which then fails to start).
    log = proc.stderr.read().decode()
    assert "graceful shutdown triggered" in log
    assert "reloading" not in log
    assert "Traceback" not in log


def _raw(port: int, data: bytes, *, pause: float = 0.0, rest: bytes = b"") -> bytes:
    """Sends `data` (then `rest` after `pause` seconds) on a socket of its own; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=40) as sock:
        sock.sendall(data)
        if rest:
            time.sleep(pause)
            sock.sendall(rest)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _post_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: k1\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_what_the_server_takes_from_clients(web_server):
    """Bodies over the limit, a chunked body, a request line that is not HTTP and a slow
    client each get an answer (never a reset, a hang or a 500), and the request log keeps
    query strings out (member ids travel there)."""
    port, proc = web_server
    big = 3 * 1024 * 1024  # over LOYALTY_API_MAX_BODY_BYTES (2 MiB)
    answer = _raw(port, _post_head("/api/v1/events/batch", big) + b"x" * big)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in answer

    chunked = (
        b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Idempotency-Key: k2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    answer = _raw(port, chunked)
    assert answer.startswith(b"HTTP/1.1 411")
    assert b"length_required" in answer

    assert _raw(port, b"GARBAGE\r\n\r\n").split(b" ", 2)[1] == b"400"

    # A client that pauses 5 s inside its body: answered as any request (401: no credential).
    body = b'{"program_id": "p"}'
    answer = _raw(port, _post_head("/api/v1/events", len(body)) + body[:5], pause=5, rest=body[5:])
    assert answer.startswith(b"HTTP/1.1 401")

    _request(port, "GET", "/api/v1/vouchers?member_id=alice@example.com")
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    log = proc.stderr.read().decode()
    assert "GET /api/v1/vouchers" in log
    assert "alice" not in log
    assert "Traceback" not in log


def test_sigterm_lets_a_request_in_flight_finish(web_server, tmp_path):
    """Procfile runners send SIGTERM to the whole process group: a worker in the middle of a
    request (here, its readiness check waiting for the database, which the test holds
    locked) finishes it and answers before exiting."""
    import sqlite3
    import threading

    port, proc = web_server
    lock = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    answers: list[bytes] = []
    request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    client = threading.Thread(target=lambda: answers.append(_raw(port, request)))
    client.start()
    time.sleep(1)  # the worker waits for the database
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(1)
    lock.execute("ROLLBACK")
    lock.close()
    client.join(30)
    assert answers
    assert answers[0].split(b" ", 2)[1] == b"200"
