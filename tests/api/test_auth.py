"""Authentication: JWT from Molam ID (RS256/ES256 only, iss/aud/exp checked) and merchant API
keys (hashed, revocable, scoped). Every bad credential is a 401 problem; headers grant nothing."""

import base64
import json
import time
import uuid
from datetime import timedelta
from io import StringIO

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from werkzeug import Response

from access import authentication
from access.models import MerchantAPIKey
from access.permissions import API_KEY_DEFAULT_PERMISSIONS
from audit.integrity import entry_digest_of
from audit.models import AuditEntry
from audit.verify import audit_verify
from loyalty.models import LedgerEntry, MemberBalance, Merchant

from .conftest import AUDIENCE, ISSUER, OWN, ApiClient

pytestmark = pytest.mark.django_db


def member_url(program, member="u_1"):
    return f"/api/v1/programs/{program.pk}/members/{member}"


def assert_401(response):
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert "WWW-Authenticate" in response


def test_valid_token_reads_balance(api, funded):
    response = api("merchant_admin").get(member_url(funded))
    assert response.status_code == 200
    assert response.json()["points_balance"] == "2000.00"


def test_no_credential_is_401(api, funded):
    assert_401(api(None).get(member_url(funded)))


def test_wrong_signature_is_401(make_token, funded):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = make_token(["system"], key=other_key)
    assert_401(ApiClient(f"Bearer {token}").get(member_url(funded)))


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"iss": "https://evil.example"}, "invalid_token"),
        ({"aud": "someone-else"}, "invalid_token"),
        ({"exp": int(time.time()) - 3600}, "token_expired"),
    ],
    ids=["wrong-issuer", "wrong-audience", "expired"],
)
def test_bad_claims_are_401(make_token, funded, claims, code):
    token = make_token(["system"], **claims)
    response = ApiClient(f"Bearer {token}").get(member_url(funded))
    assert_401(response)
    assert response.json()["code"] == code


def test_a_token_verified_before_still_expires(make_token, funded):
    # Verified tokens are remembered per process; each use checks `exp` again.
    token = make_token(["system"], exp=int(time.time()) + 60)
    client = ApiClient(f"Bearer {token}")
    assert client.get(member_url(funded)).status_code == 200
    with time_machine.travel(timezone.now() + timedelta(seconds=60 + 31)):
        response = client.get(member_url(funded))
    assert_401(response)
    assert response.json()["code"] == "token_expired"


def test_a_token_verified_before_is_checked_against_the_current_settings(
    make_token, funded, jwt_settings
):
    token = make_token(["system"])
    client = ApiClient(f"Bearer {token}")
    assert client.get(member_url(funded)).status_code == 200
    jwt_settings.LOYALTY_JWT_AUDIENCE = "another-audience"
    assert_401(client.get(member_url(funded)))
    jwt_settings.LOYALTY_JWT_AUDIENCE = AUDIENCE
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwt_settings.LOYALTY_JWT_PUBLIC_KEY = (
        other.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert_401(client.get(member_url(funded)))


@pytest.mark.parametrize("missing", ["sub", "roles", "exp", "iss", "aud"])
def test_missing_claim_is_401(rsa_key, funded, missing):
    payload = {
        "sub": "user-1",
        "roles": ["system"],
        "merchant_id": OWN,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    del payload[missing]
    token = jwt.encode(payload, rsa_key, algorithm="RS256")
    assert_401(ApiClient(f"Bearer {token}").get(member_url(funded)))


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_401(funded):
    claims = {
        "sub": "user-1",
        "roles": ["system"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert_401(ApiClient(f"Bearer {token}").get(member_url(funded)))


def test_hs256_signed_with_the_public_key_is_401(public_pem, funded):
    # The classic key-confusion attack: HMAC "signed" with the verifier's public key.
    import hashlib
    import hmac

    claims = {
        "sub": "attacker",
        "roles": ["system"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert_401(ApiClient(f"Bearer {token}").get(member_url(funded)))


def test_garbage_token_is_401(funded):
    assert_401(ApiClient("Bearer not-a-jwt").get(member_url(funded)))
    assert_401(ApiClient("Bearer").get(member_url(funded)))


def test_merchant_admin_without_merchant_scope_is_401(make_token, funded):
    token = make_token(["merchant_admin"], merchant_id=None)
    assert_401(ApiClient(f"Bearer {token}").get(member_url(funded)))


def test_es256_token_verifies_against_an_ec_key(settings, funded):
    key = ec.generate_private_key(ec.SECP256R1())
    settings.LOYALTY_JWT_PUBLIC_KEY = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    claims = {
        "sub": "svc",
        "roles": ["auditor"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    token = jwt.encode(claims, key, algorithm="ES256")
    assert ApiClient(f"Bearer {token}").get(member_url(funded)).status_code == 200
    # An RS256 token cannot pass against an EC key.
    rsa_token = jwt.encode(
        claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    )
    assert_401(ApiClient(f"Bearer {rsa_token}").get(member_url(funded)))


def test_jwks_url_is_used_to_find_the_key(settings, httpserver, rsa_key, funded):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    httpserver.expect_request("/jwks.json").respond_with_json({"keys": [jwk]})
    settings.LOYALTY_JWT_PUBLIC_KEY = ""
    settings.LOYALTY_JWT_JWKS_URL = httpserver.url_for("/jwks.json")
    claims = {
        "sub": "svc",
        "roles": ["auditor"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    token = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert ApiClient(f"Bearer {token}").get(member_url(funded)).status_code == 200
    unknown_kid = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "nope"})
    assert_401(ApiClient(f"Bearer {unknown_kid}").get(member_url(funded)))


@pytest.mark.parametrize(
    ("body", "status"),
    [("<html>502 Bad Gateway</html>", 200), ("", 200), ("<html>oops</html>", 502)],
    ids=["html-200", "empty-200", "html-502"],
)
def test_a_jwks_endpoint_answering_other_than_json_is_401_not_500(
    settings, httpserver, rsa_key, funded, body, status
):
    httpserver.expect_request("/jwks.json").respond_with_data(
        body, status=status, content_type="text/html"
    )
    # A process whose key set is not fetched yet (or has outlived its lifespan): the set an
    # earlier test fetched from the same address would otherwise still verify.
    authentication._jwks_client.cache_clear()
    settings.LOYALTY_JWT_PUBLIC_KEY = ""
    settings.LOYALTY_JWT_JWKS_URL = httpserver.url_for("/jwks.json")
    claims = {"sub": "svc", "roles": ["auditor"], "iss": ISSUER, "aud": AUDIENCE,
              "exp": int(time.time()) + 300}  # fmt: skip
    token = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    response = ApiClient(f"Bearer {token}").get(member_url(funded))
    assert_401(response)
    assert response.json()["detail"] == "The token's signing keys cannot be fetched."


def test_a_key_withdrawn_from_the_jwks_stops_verifying_once_the_set_is_fetched_again(
    settings, httpserver, rsa_key, funded
):
    """A rotation (or a compromise) takes a key out of Molam ID's set: tokens it signs must
    fail once the cached set has lived its lifespan, in every process, with no restart."""
    replacement = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(key, kid):
        entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        return {**entry, "kid": kid, "use": "sig", "alg": "RS256"}

    served = {"keys": [jwk(rsa_key, "old")]}
    httpserver.expect_request("/rotating.json").respond_with_handler(
        lambda request: Response(json.dumps(served), content_type="application/json")
    )
    settings.LOYALTY_JWT_PUBLIC_KEY = ""
    settings.LOYALTY_JWT_JWKS_URL = httpserver.url_for("/rotating.json")
    settings.LOYALTY_JWT_JWKS_LIFESPAN_SECONDS = 1

    def token(key, kid):
        claims = {"sub": "svc", "roles": ["auditor"], "iss": ISSUER, "aud": AUDIENCE,
                  "exp": int(time.time()) + 300, "jti": uuid.uuid4().hex}  # fmt: skip
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    assert ApiClient(f"Bearer {token(rsa_key, 'old')}").get(member_url(funded)).status_code == 200
    served["keys"] = [jwk(replacement, "new")]
    time.sleep(1.2)  # the set's lifespan (time.monotonic, which time travel does not move)
    assert_401(ApiClient(f"Bearer {token(rsa_key, 'old')}").get(member_url(funded)))
    assert (
        ApiClient(f"Bearer {token(replacement, 'new')}").get(member_url(funded)).status_code == 200
    )


@pytest.mark.parametrize(
    "sub", ["user:1", "system", "system:point_expiry", "anonymous", "apikey:ab"]
)
def test_a_subject_reserved_for_the_engines_actors_is_refused(api, make_token, funded, sub):
    """Staff without a link act as `user:<pk>`, jobs as `system...`, API keys as `apikey:...`:
    a token may not pass for them (audit trail, approvals' distinct people)."""
    client = ApiClient(f"Bearer {make_token(['system'], sub=sub)}")
    assert_401(client.get(member_url(funded)))
    body = {"program_id": str(funded.pk), "member_id": "u_9", "type": "purchase",
            "amount": "5000", "currency": "XOF"}  # fmt: skip
    assert_401(client.post("/api/v1/events", body))
    assert not LedgerEntry.objects.filter(balance__member_id="u_9").exists()


def test_role_headers_grant_nothing(api, make_token, funded):
    forged = {"X-User-Role": "system", "X-User-Id": "admin"}
    assert_401(api(None).get(member_url(funded), headers=forged))
    # A merchant_admin may read, never write, whatever the headers claim.
    body = {"points": "10", "reason": "forged"}
    response = api("merchant_admin").post(member_url(funded) + "/adjustments", body, headers=forged)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 0


def test_actor_of_the_credential_is_audited(api, funded):
    client = api("system", sub="svc-checkout")
    response = client.post(
        "/api/v1/events",
        {
            "program_id": str(funded.pk),
            "member_id": "u_2",
            "type": "purchase",
            "amount": "5000",
            "currency": "XOF",
        },
        headers={"User-Agent": "checkout/1.0", "X-User-Id": "someone-else"},
    )
    assert response.status_code == 201
    entry = LedgerEntry.objects.get(pk=response.json()["transaction_id"])
    assert (entry.actor_id, entry.actor_role) == ("svc-checkout", "system")
    audit = AuditEntry.objects.filter(entity_type="transaction", entity_id=str(entry.pk)).get()
    assert (audit.actor_id, audit.actor_role, audit.ip) == ("svc-checkout", "system", "127.0.0.1")
    assert audit.user_agent == "checkout/1.0"
    assert audit.credential_id == "jwt:svc-checkout"  # no `jti`: the subject
    assert entry_digest_of(audit) == audit.digest


def test_each_request_of_one_token_records_its_own_address_and_agent(make_token, funded, settings):
    """The caller of a token is kept between requests: not its address or user agent, which
    every audit entry records as that request sent them."""
    client = ApiClient(f"Bearer {make_token(['system'], sub='svc-checkout')}")

    def audited(user_agent, **extra):
        response = client.client.post(
            "/api/v1/events",
            {
                "program_id": str(funded.pk),
                "member_id": "u_2",
                "type": "purchase",
                "amount": "5000",
                "currency": "XOF",
            },
            content_type="application/json",
            headers={
                "Authorization": client.auth,
                "Idempotency-Key": f"k-{uuid.uuid4()}",
                "User-Agent": user_agent,
            },
            **extra,
        )
        assert response.status_code == 201, response.content
        audit = AuditEntry.objects.get(
            entity_type="transaction", entity_id=response.json()["transaction_id"]
        )
        return audit.ip, audit.user_agent

    assert audited("first/1.0") == ("127.0.0.1", "first/1.0")
    assert audited("second/1.0") == ("127.0.0.1", "second/1.0")
    assert audited("first/1.0", REMOTE_ADDR="10.1.2.3") == ("10.1.2.3", "first/1.0")
    settings.LOYALTY_API_NUM_PROXIES = 1
    forwarded = audited("first/1.0", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert forwarded == ("203.0.113.7", "first/1.0")


def test_credential_of_each_request_is_audited(make_token, funded):
    """JWT (its `jti`) and API key (its prefix): the audit entry of the write names it, its
    digest covers it, and the audit API shows it."""
    api_key, key = make_key()
    token = make_token(["system"], sub="svc-checkout", jti="token-42")
    written = {}
    for name, auth in (("jwt", f"Bearer {token}"), ("api_key", f"Api-Key {key}")):
        response = ApiClient(auth).post(
            "/api/v1/events",
            {
                "program_id": str(funded.pk),
                "member_id": "u_2",
                "type": "purchase",
                "amount": "5000",
                "currency": "XOF",
            },
            headers={"User-Agent": f"{name}/1.0"},
        )
        assert response.status_code == 201, response.content
        written[name] = AuditEntry.objects.get(
            entity_type="transaction", entity_id=response.json()["transaction_id"]
        )
    assert written["jwt"].credential_id == "jwt:token-42"
    assert written["api_key"].credential_id == f"apikey:{api_key.prefix}"
    assert (written["api_key"].actor_role, written["api_key"].user_agent) == (
        "api_key",
        "api_key/1.0",
    )
    for audit in written.values():
        assert entry_digest_of(audit) == audit.digest
    assert audit_verify() == []
    trail = ApiClient(f"Bearer {make_token(['auditor'], merchant_id=None)}").get(
        f"/api/v1/audit/transaction/{written['jwt'].entity_id}"
    )
    assert trail.status_code == 200, trail.content
    assert trail.json()["results"][0]["credential_id"] == "jwt:token-42"


def test_credential_of_each_batch_item_is_audited(make_token, funded):
    """The batch path writes its audit entries in bulk: each still names the credential and
    its digest (v2) covers it."""
    api_key, key = make_key()
    token = make_token(["system"], sub="svc-checkout", jti="token-43")
    expected = {"jwt": "jwt:token-43", "api_key": f"apikey:{api_key.prefix}"}
    for name, auth in (("jwt", f"Bearer {token}"), ("api_key", f"Api-Key {key}")):
        events = [
            {
                "program_id": str(funded.pk),
                "member_id": f"u_{n}",
                "type": "purchase",
                "amount": "5000",
                "currency": "XOF",
                "idempotency_key": f"{name}-item-{n}",
            }
            for n in range(3)
        ]
        response = ApiClient(auth).post("/api/v1/events/batch", {"events": events})
        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert [r["status"] for r in results] == [201, 201, 201]
        for result in results:
            audit = AuditEntry.objects.get(
                entity_type="transaction", entity_id=result["body"]["transaction_id"]
            )
            assert audit.credential_id == expected[name]
            assert entry_digest_of(audit) == audit.digest
    assert audit_verify() == []


# --- API keys -------------------------------------------------------------------------------
def make_key(merchant_id=OWN, permissions=("members:read", "events:write"), **fields):
    merchant, _ = Merchant.objects.get_or_create(id=merchant_id)
    return MerchantAPIKey.objects.create_key(
        name="checkout", merchant=merchant, permissions=list(permissions), **fields
    )


def test_api_key_is_stored_hashed_and_works(funded):
    api_key, key = make_key()
    assert key not in (api_key.hashed_key, api_key.id)
    assert ApiClient(f"Api-Key {key}").get(member_url(funded)).status_code == 200
    client = ApiClient(None)
    assert client.get(member_url(funded), headers={"X-Api-Key": key}).status_code == 200


def test_api_key_holds_only_its_permissions(funded):
    _, key = make_key(permissions=["members:read"])
    response = ApiClient(f"Api-Key {key}").post(
        "/api/v1/redemptions",
        {
            "program_id": str(funded.pk),
            "member_id": "u_1",
            "points": "10",
            "reward_type": "discount",
        },
    )
    assert response.status_code == 403


def test_a_checkout_key_cannot_adjust_balances_through_events(funded):
    """`events:write` lets a checkout integration send purchases, refunds and referrals; a
    `manual_adjust` event is a balance adjustment and needs `members:adjust`, as the
    adjustments endpoint does, on the single and the batch path alike."""
    _, key = make_key(permissions=API_KEY_DEFAULT_PERMISSIONS)
    client = ApiClient(f"Api-Key {key}")
    adjust = {"program_id": str(funded.pk), "member_id": "u_1", "type": "manual_adjust",
              "points": "9999", "reason": "goodwill"}  # fmt: skip
    entries = LedgerEntry.objects.count()
    balance = MemberBalance.objects.get(member_id="u_1").points_balance
    response = client.post("/api/v1/events", adjust)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    batch = {"events": [
        {**adjust, "idempotency_key": "adj-1"},
        {**adjust, "member_id": "u_new", "idempotency_key": "adj-2"},
        {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
         "amount": "5000", "currency": "XOF", "idempotency_key": "buy-1"},
    ]}  # fmt: skip
    results = client.post("/api/v1/events/batch", batch).json()["results"]
    assert [r["status"] for r in results] == [403, 403, 201]
    assert {r["error"]["code"] for r in results[:2]} == {"permission_denied"}
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 0
    assert LedgerEntry.objects.count() == entries + 1  # the purchase
    assert MemberBalance.objects.get(member_id="u_1").points_balance == balance + 100
    assert not MemberBalance.objects.filter(member_id="u_new").exists()
    # With the permission, the same event is applied.
    _, adjusting = make_key(permissions=[*API_KEY_DEFAULT_PERMISSIONS, "members:adjust"])
    response = ApiClient(f"Api-Key {adjusting}").post("/api/v1/events", adjust)
    assert response.status_code == 201
    assert response.json()["points"] == "9999.00"


def test_api_key_is_scoped_to_its_merchant(funded):
    _, key = make_key(merchant_id="m_other")
    response = ApiClient(f"Api-Key {key}").get(member_url(funded))
    assert response.status_code == 404


def test_revoked_expired_and_wrong_keys_are_401(funded):
    revoked, revoked_key = make_key()
    revoked.revoked = True
    revoked.save(update_fields=["revoked"])
    _, expired_key = make_key(expiry_date=timezone.now() - timedelta(minutes=1))
    _, good_key = make_key()
    wrong = good_key[:-1] + ("A" if good_key[-1] != "A" else "B")
    for key in (revoked_key, expired_key, wrong, "no-dot-here"):
        assert_401(ApiClient(f"Api-Key {key}").get(member_url(funded)))


def test_an_api_key_with_a_control_character_is_401_whatever_its_header(funded):
    """A NUL in a key is a wrong key (401), not text the database refuses (was 400)."""
    _, key = make_key()
    prefix, _, secret = key.partition(".")
    for bad in (f"{prefix}\x00.{secret}", f"{prefix}.{secret}\x00", f"{prefix}\x1f.{secret}"):
        assert_401(ApiClient(f"Api-Key {bad}").get(member_url(funded)))
        assert_401(ApiClient(None).get(member_url(funded), headers={"X-Api-Key": bad}))


def test_an_api_key_hashed_by_an_older_hasher_works_and_is_rehashed(funded):
    """Keys made before the library's SHA-512 hasher were hashed by Django's password hashers:
    they keep working, and their hash is upgraded on first use."""
    from django.contrib.auth.hashers import make_password

    api_key, key = make_key()
    generator = MerchantAPIKey.objects.key_generator
    MerchantAPIKey.objects.filter(pk=api_key.pk).update(hashed_key=make_password(key))
    assert ApiClient(f"Api-Key {key}").get(member_url(funded)).status_code == 200
    assert generator.using_preferred_hasher(MerchantAPIKey.objects.get(pk=api_key.pk).hashed_key)
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert_401(ApiClient(f"Api-Key {wrong}").get(member_url(funded)))


def test_an_api_key_revoked_or_expired_after_use_is_refused_at_once(funded):
    api_key, key = make_key()
    client = ApiClient(f"Api-Key {key}")
    assert client.get(member_url(funded)).status_code == 200
    MerchantAPIKey.objects.filter(pk=api_key.pk).update(expiry_date=timezone.now())
    assert_401(client.get(member_url(funded)))
    MerchantAPIKey.objects.filter(pk=api_key.pk).update(expiry_date=None, revoked=True)
    assert_401(client.get(member_url(funded)))


def test_apikey_create_prints_the_key_once(funded):
    out, err = StringIO(), StringIO()
    call_command(
        "apikey_create", "--merchant", OWN, "--name", "pos", "--permission", "members:read",
        stdout=out, stderr=err,
    )  # fmt: skip
    key = out.getvalue().strip()
    api_key = MerchantAPIKey.objects.get(prefix=key.split(".")[0])
    assert api_key.permissions == ["members:read"]
    assert key not in err.getvalue()
    assert ApiClient(f"Api-Key {key}").get(member_url(funded)).status_code == 200


def test_apikey_create_refuses_a_permission_keys_cannot_hold():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command(
            "apikey_create", "--merchant", OWN, "--name", "x", "--permission", "approvals:decide",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
    assert MerchantAPIKey.objects.count() == 0


@pytest.mark.parametrize(
    ("roles", "path", "body", "acted_as"),
    [
        # An auditor changes nothing: the write was the system role's.
        (["auditor", "system"], "/api/v1/events", "purchase", "system"),
        (["merchant_admin", "system"], "/api/v1/events", "purchase", "system"),
        # finance_ops outranks ops_marketing, but cannot create a program.
        (["auditor", "finance_ops", "ops_marketing"], "/api/v1/programs", "program",
         "ops_marketing"),
    ],
)  # fmt: skip
def test_a_token_with_several_roles_acts_as_the_role_that_may_make_the_write(
    make_token, funded, roles, path, body, acted_as
):
    from audit.models import AuditEntry

    from .conftest import ApiClient
    from .test_programs_campaigns import PROGRAM

    sent = (
        {"program_id": str(funded.pk), "member_id": "u_2", "type": "purchase",
         "amount": "5000", "currency": "XOF"}
        if body == "purchase" else PROGRAM
    )  # fmt: skip
    client = ApiClient("Bearer " + make_token(roles, sub="svc-x"))
    response = client.post(path, sent, key=f"k-{uuid.uuid4()}")
    assert response.status_code == 201, response.content
    if body == "purchase":
        entity_id = response.json()["transaction_id"]
        assert LedgerEntry.objects.get(pk=entity_id).actor_role == acted_as
    else:
        entity_id = response.json()["id"]
    audited = AuditEntry.objects.filter(entity_id=entity_id, actor_id="svc-x")
    assert {entry.actor_role for entry in audited} == {acted_as}


@pytest.mark.parametrize(
    ("claims", "method"),
    [
        ({"sub": "a\ud800"}, "post"),  # a lone surrogate: no database text holds it
        ({"sub": "a\x00"}, "post"),
        ({"sub": "a\x01\n"}, "post"),
        ({"jti": "j\ud800"}, "post"),
        ({"jti": 7}, "post"),
        ({"roles": ["merchant_admin"], "merchant_id": "m\ud800"}, "get"),
        ({"merchant_id": "m\ud800"}, "post"),
        ({"merchant_id": "m own"}, "post"),  # not a merchant id the API could have made
    ],
)
def test_a_token_whose_ids_are_no_text_an_id_can_be_is_401(make_token, own_program, claims, method):
    """The token is signed by the identity provider, but its ids go into queries, the ledger
    and the audit trail: one no stored id can be is a bad token (401), never a 500."""
    roles = claims.pop("roles", ["system"])
    client = Client(raise_request_exception=False)
    headers = {"Authorization": f"Bearer {make_token(roles, **claims)}", "Idempotency-Key": "k-1"}
    if method == "get":
        response = client.get("/api/v1/programs", headers=headers)
    else:
        response = client.post(
            "/api/v1/programs", {"name": "n", "currency": "XOF", "earn_rate": "0.01",
                                 "point_value": "1"},
            content_type="application/json", headers=headers,
        )  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (401, "invalid_token")
