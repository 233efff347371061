"""Property-based run of the project's own OpenAPI schema (schemathesis): for every
operation, generated requests by a fully permitted caller never get a 5xx, and every answer
conforms to the schema (status code, content type, body).

Bounded and reproducible: a few examples per operation, derandomized (fixed seed).
"""

from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@contextmanager
def connection_kept_open():
    """Like django.test.Client: in-process requests must not close the test's connection
    at the end of each request."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _keep_connection_open():
    with connection_kept_open():
        yield


# Loaded once at collection (the schema needs no database); the lazy fixture loader of
# schemathesis does not support pytest 9 yet.
with connection_kept_open():
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.mark.timeout(120)
@schema.parametrize()
@settings(
    max_examples=5,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.django_db
def test_api_conforms_to_its_schema(case, make_token, funded):
    token = make_token(["system"], merchant_id=funded.merchant_id)
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
