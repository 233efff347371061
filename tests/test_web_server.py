"""The Procfile's `web` process serves the app: the health check, the API's problem answers
and the admin's static files (whitenoise), through the production web server (granian)."""

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
        yield port
    finally:
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
    assert "granian" in _web_command()
    status, _, body = _request(web_server, "GET", "/healthz")
    assert (status, body) == (200, b'{"status": "ok"}')

    # An API write without a credential: the problem answer, over a kept-alive connection.
    status, headers, body = _request(
        web_server,
        "POST",
        "/api/v1/events",
        body=b"{}",
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
    )
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert b'"code":"not_authenticated"' in body.replace(b" ", b"")

    status, headers, body = _request(web_server, "GET", "/static/admin/css/base.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert len(body) > 1000
