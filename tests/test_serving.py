"""The web process's WSGI application keeps the process environment out of requests."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from loyalty_project.serving import without_process_environment


def test_a_request_sees_its_own_keys_and_none_of_the_process_environment():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return [b""]

    process = {
        "DATABASE_URL": "postgres://user:secret@db/loyalty",
        "SECRET_KEY": "s",
        "PATH": "/bin",
    }
    request = {
        **process,
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/v1/events",
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_AUTHORIZATION": "Bearer t",
        "wsgi.url_scheme": "http",
    }
    without_process_environment(app, process)(request, None)
    assert not {"DATABASE_URL", "SECRET_KEY", "PATH"} & seen.keys()
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["HTTP_AUTHORIZATION"] == "Bearer t"
    assert seen["CONTENT_TYPE"] == "application/json"
    assert seen["wsgi.url_scheme"] == "http"


def test_a_process_variable_named_like_a_request_key_goes_unless_the_request_sent_its_own():
    """HTTP_PROXY is both a process setting (with credentials, often) and the `Proxy:` header's
    key: the server's copy goes, a request's own header stays."""
    seen = {}
    app = without_process_environment(
        lambda environ, _: seen.update(environ) or [b""], {"HTTP_PROXY": "http://u:pw@proxy"}
    )
    app({"HTTP_PROXY": "http://u:pw@proxy", "REQUEST_METHOD": "GET"}, None)
    assert "HTTP_PROXY" not in seen
    seen.clear()
    app({"HTTP_PROXY": "from-request", "REQUEST_METHOD": "GET"}, None)
    assert seen["HTTP_PROXY"] == "from-request"


def test_the_web_process_freezes_its_urls_views_and_serializers_out_of_the_collector():
    """wsgi.py loads the URL configuration before gc.freeze(): otherwise the first request
    imports every view (~25,000 objects) after it, and each full collection of a worker walks
    them all again, a pause of tens of milliseconds its queued requests wait out."""
    code = textwrap.dedent(
        """
        import gc, json
        from wsgiref.util import setup_testing_defaults
        import loyalty_project.wsgi as wsgi

        environ = {"PATH_INFO": "/api/v1/programs"}
        setup_testing_defaults(environ)
        statuses = []
        start_response = lambda status, headers, exc=None: statuses.append(status)
        b"".join(wsgi.application(environ, start_response))
        gc.collect()
        print(json.dumps({"status": statuses[0], "tracked": len(gc.get_objects())}))
        """
    )
    seen = json.loads(_python_output(code).strip().splitlines()[-1])
    assert seen["status"].startswith("401")  # the request went through the URLs to a view
    assert seen["tracked"] < 2_000  # not the ~25,000 objects of the views' modules


def test_a_celery_worker_process_freezes_its_loaded_objects_out_of_the_collector():
    """Each prefork child, once started (worker_process_init), leaves Django's, the app's and
    the tasks' objects out of the collector's generations, as the web process does."""
    code = textwrap.dedent(
        """
        import gc
        import django
        django.setup()
        from celery.signals import worker_process_init
        import loyalty_project.celery

        before = gc.get_freeze_count()
        worker_process_init.send(sender=None)
        print(before, gc.get_freeze_count())
        """
    )
    before, after = map(int, _python_output(code).split()[-2:])
    assert before == 0
    assert after > 50_000  # Django and the app: ~125,000 objects


def _python_output(code: str) -> str:
    """What `code` prints, run by this interpreter in a new process with the app's settings."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "loyalty_project.settings.base"}
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed program)
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    return done.stdout
