"""API test helpers: a generated RSA key pair standing in for Molam ID, token and client
factories, and a funded member with a pending hold and an active voucher."""

import time
import uuid
from decimal import Decimal

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import Client

from loyalty.services import event_ingest
from tests.conftest import hold
from tests.factories import PurchaseFactory

ISSUER = "https://id.molam.test"
AUDIENCE = "molam-loyalty-test"
OWN = "m_own"
OTHER = "m_other"


@pytest.fixture(scope="session")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def public_pem(rsa_key) -> str:
    return (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(autouse=True)
def jwt_settings(settings, public_pem):
    settings.LOYALTY_JWT_PUBLIC_KEY = public_pem
    settings.LOYALTY_JWT_JWKS_URL = ""
    settings.LOYALTY_JWT_ISSUER = ISSUER
    settings.LOYALTY_JWT_AUDIENCE = AUDIENCE
    return settings


@pytest.fixture
def make_token(rsa_key):
    def make(roles=("system",), merchant_id=OWN, sub="user-1", key=None, alg="RS256", **claims):
        payload = {
            "sub": sub,
            "roles": list(roles),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time()) + 300,
            "iat": int(time.time()),
        }
        if merchant_id is not None:
            payload["merchant_id"] = merchant_id
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or rsa_key, algorithm=alg)

    return make


JSON = "application/json"


class ApiClient:
    """A django.test.Client that sends JSON, a credential and a fresh Idempotency-Key.

    `key=False` sends no Idempotency-Key; a str or bytes body is sent as is, with
    `content_type` (JSON unless told)."""

    def __init__(self, auth: str | None):
        self.client = Client()
        self.auth = auth

    def _headers(self, key, headers):
        out = {}
        if self.auth:
            out["Authorization"] = self.auth
        if key is not False:
            out["Idempotency-Key"] = key or f"k-{uuid.uuid4()}"
        out.update(headers or {})
        return out

    def get(self, path, params=None, headers=None):
        return self.client.get(path, params or {}, headers=self._headers(False, headers))

    def post(self, path, body=None, key=None, headers=None, content_type=JSON):
        return self.client.post(
            path,
            body if body is not None else {},
            content_type=content_type,
            headers=self._headers(key, headers),
        )

    def patch(self, path, body=None, key=None, headers=None, content_type=JSON):
        return self.client.patch(
            path,
            body if body is not None else {},
            content_type=content_type,
            headers=self._headers(key, headers),
        )

    def delete(self, path, key=None, headers=None):
        return self.client.delete(path, headers=self._headers(key, headers))


@pytest.fixture
def api(make_token):
    """`api("finance_ops")`, `api("merchant_admin", merchant_id=OTHER)`, `api(None)`."""

    def make(*roles, merchant_id=OWN, sub="user-1", auth=None):
        if auth is None and roles and roles[0] is not None:
            auth = "Bearer " + make_token(roles, merchant_id=merchant_id, sub=sub)
        return ApiClient(auth)

    return make


@pytest.fixture
def own_program(make_program):
    return make_program(merchant_id=OWN)


@pytest.fixture
def funded(own_program, actor):
    """Member u_1 of the own merchant's program with 2,000 points."""
    event_ingest(
        program=own_program,
        event=PurchaseFactory(member_id="u_1", amount=Decimal("100000")),
        actor=actor,
    )
    return own_program


@pytest.fixture
def pending_hold(funded, actor):
    return hold(funded, "100", actor, key="hold-fixture")


@pytest.fixture
def active_voucher(funded, actor):
    redemption = hold(funded, "200", actor, key="voucher-fixture", capture=True)
    redemption.refresh_from_db()
    return redemption.voucher
