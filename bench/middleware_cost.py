"""CPU cost of the middleware stack on an API request, in one process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/middleware_cost.py --rounds 15 --requests 300

Builds Django's WSGI handler with the settings' MIDDLEWARE, with none, and without each one in
turn, and sends each the same unauthenticated `GET /api/v1/programs` (a 401 from the REST
framework: no database, so only the middleware and the view's refusal differ). The rounds
interleave the configurations and the minimum of each is kept: on a shared host separate
processes differ by more than the few microseconds a middleware costs.
"""

import argparse
import io
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environ(path: str) -> dict:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "HTTP_USER_AGENT": "bench", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300, help="per configuration and round")
    parser.add_argument("--path", default="/api/v1/programs")
    opts = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
    os.environ["DEBUG"] = "False"
    os.environ["ALLOWED_HOSTS"] = "127.0.0.1"
    import django

    django.setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    logging.getLogger("django.request").setLevel(logging.ERROR)  # 401s, one per request

    def handler(middleware: list[str]) -> WSGIHandler:
        with override_settings(MIDDLEWARE=middleware):
            return WSGIHandler()

    full = list(settings.MIDDLEWARE)
    handlers = {"all": handler(full), "none": handler([])}
    for name in full:
        handlers["without " + name.rsplit(".", 1)[1]] = handler([m for m in full if m != name])

    def start_response(status, headers, exc_info=None):
        pass

    best = dict.fromkeys(handlers, float("inf"))
    for _ in range(opts.rounds):
        for name, app in handlers.items():
            cpu0 = time.process_time()
            for _ in range(opts.requests):
                b"".join(app(environ(opts.path), start_response))
            best[name] = min(best[name], (time.process_time() - cpu0) / opts.requests * 1e6)
    print(f"GET {opts.path}, min of {opts.rounds} rounds of {opts.requests} requests")
    for name, us in best.items():
        print(f"{name:<36} {us:7.1f} us a request   saves {best['all'] - us:6.1f}")


if __name__ == "__main__":
    main()
