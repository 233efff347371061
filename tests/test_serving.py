"""The web process's WSGI application keeps the process environment out of requests."""

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
