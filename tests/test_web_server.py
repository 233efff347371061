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
