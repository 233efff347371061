"""What the web process wraps around Django's WSGI handler."""

import os
from collections.abc import Callable, Iterable

# Keys a server sets for a request (PEP 3333 and CGI); every other key a request's environ holds
# came from the process environment.
_REQUEST_PREFIXES = ("HTTP_", "wsgi.", "SERVER_", "REMOTE_", "CONTENT_")
_REQUEST_KEYS = {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "GATEWAY_INTERFACE"}


def without_process_environment(app: Callable, process_environ=None) -> Callable:
    """`app` seeing only its request's keys. Some servers (granian, wsgiref) copy the whole process
    environment into every request's environ, so DATABASE_URL, the keys and a proxy's
    credentials (HTTP_PROXY) would show in `request.META`, and in anything that logs or
    reports it. A key named like a request's (HTTP_PROXY is also the `Proxy:` header's) is
    dropped only when it still holds the process's value."""
    process = dict(os.environ if process_environ is None else process_environ)
    request_shaped = {k for k in process if k in _REQUEST_KEYS or k.startswith(_REQUEST_PREFIXES)}
    process_keys = frozenset(process)

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if "REQUEST_METHOD" not in environ:
            # What uWSGI hands over for a request line it could not parse (garbage, TLS on
            # the plain port): Django would fail on it with a 500 and a logged traceback.
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"Bad Request"]
        for key in process_keys.intersection(environ):
            if key not in request_shaped or environ[key] == process[key]:
                del environ[key]
        return app(environ, start_response)

    return application
