"""API authentication: JWT bearer tokens from Molam ID, and merchant API keys.

The role always comes from the verified credential. Headers such as `X-User-Role` or
`X-User-Id` are never read.
"""

import functools
import logging
import re
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.conf import settings
from rest_framework import HTTP_HEADER_ENCODING
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from loyalty.actors import Actor
from loyalty.models import MERCHANT_ID_PATTERN

from .caller import Caller, client_ip, user_agent
from .models import MerchantAPIKey, subject_reserved
from .permissions import API_KEY_PERMISSIONS, ROLE_ORDER, ROLE_PERMISSIONS, permissions_for_roles
from .rows import row_get

logger = logging.getLogger(__name__)

# Asymmetric algorithms only: a token's header never chooses HS256 or `none`.
ALGORITHMS_BY_KEY = {rsa.RSAPublicKey: ["RS256"], ec.EllipticCurvePublicKey: ["ES256"]}
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub", "roles"]
JWT_LEEWAY_SECONDS = 30
MERCHANT_ID = re.compile(MERCHANT_ID_PATTERN)  # as a merchant is created


def authorization_header(request) -> bytes:
    """DRF's `get_authorization_header`, read from `request.META`: DRF reads it from
    `request.headers`, which first copies every header of the request into a new mapping
    (~8 us a request)."""
    value = request.META.get("HTTP_AUTHORIZATION", b"")
    if isinstance(value, str):
        value = value.encode(HTTP_HEADER_ENCODING)
    return value


def _bind(request, caller: Caller) -> Caller:
    # DRF's Request reads unknown attributes from the Django request, so views, permissions
    # and the audit trail all see `request.caller`.
    request._request.caller = caller
    return caller


@functools.cache
def _pem_key(pem: str):
    return load_pem_public_key(pem.encode())


@functools.cache
def _jwks_client(url: str, lifespan: int) -> jwt.PyJWKClient:
    # The key set is cached for `lifespan` seconds, and each key is looked up in the set in
    # use. Not `cache_keys`: it keeps each kid's key for the life of the process, so a key
    # withdrawn from the set went on verifying tokens until a restart.
    return jwt.PyJWKClient(url, cache_keys=False, lifespan=lifespan, timeout=5)


def _verification_key(token: str):
    if settings.LOYALTY_JWT_JWKS_URL:
        try:
            client = _jwks_client(
                settings.LOYALTY_JWT_JWKS_URL, settings.LOYALTY_JWT_JWKS_LIFESPAN_SECONDS
            )
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            logger.warning("JWKS unreachable: %s", exc)
            raise AuthenticationFailed("The token's signing keys cannot be fetched.") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("Invalid token.") from exc
        except (ValueError, OSError) as exc:
            # An answer that is not JSON (a proxy's page served with 200, an empty body) or a
            # connection lost while it was read: PyJWT wraps neither.
            logger.warning("JWKS unreadable: %r", exc)
            raise AuthenticationFailed("The token's signing keys cannot be fetched.") from exc
    if settings.LOYALTY_JWT_PUBLIC_KEY:
        return _pem_key(settings.LOYALTY_JWT_PUBLIC_KEY)
    raise AuthenticationFailed("Bearer tokens are not accepted: no verification key is set.")


# Tokens verified lately, per process: an integration sends the same token for its whole
# life (minutes), and checking an RS256 signature and parsing the token costs ~0.3 ms. Only
# verified tokens are kept, with the key, issuer and audience they were verified against, and
# each use checks `exp` again (the only check whose answer changes with time); so a hit gives
# exactly what verifying again would. Bounded: cleared when full.
_VERIFIED: dict[str, tuple[object, str, str, dict]] = {}
VERIFIED_TOKENS_MAX = 1024


def jwt_claims(token: str) -> dict:
    """The verified claims of `token`, or AuthenticationFailed."""
    key = _verification_key(token)
    issuer, audience = settings.LOYALTY_JWT_ISSUER, settings.LOYALTY_JWT_AUDIENCE
    cached = _VERIFIED.get(token)
    if cached is not None and cached[0] is key and cached[1:3] == (issuer, audience):
        claims = cached[3]
        if claims["exp"] <= time.time() - JWT_LEEWAY_SECONDS:
            raise AuthenticationFailed("The token has expired.", code="token_expired")
        return claims
    claims = _jwt_verify(token, key, issuer, audience)
    if isinstance(claims.get("exp"), int | float):
        if len(_VERIFIED) >= VERIFIED_TOKENS_MAX:
            _VERIFIED.clear()
        _VERIFIED[token] = (key, issuer, audience, claims)
    return claims


def _jwt_verify(token: str, key, issuer: str, audience: str) -> dict:
    algorithms = next(
        (algs for key_type, algs in ALGORITHMS_BY_KEY.items() if isinstance(key, key_type)), None
    )
    if algorithms is None:
        raise AuthenticationFailed("The configured key is not an RSA or EC public key.")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=JWT_LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationFailed("The token has expired.", code="token_expired") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationFailed(f"Invalid token: {exc}", code="invalid_token") from exc


def caller_from_claims(claims: dict, request) -> Caller:
    sub, roles, merchant_id = claims.get("sub"), claims.get("roles"), claims.get("merchant_id")
    # Printable: the ids go into the ledger, the audit trail and queries, where a control
    # character, a NUL or a lone surrogate (which no database text holds) has no place.
    if not isinstance(sub, str) or not sub or len(sub) > 128 or not sub.isprintable():
        raise AuthenticationFailed("The token's `sub` must be a string.", code="invalid_token")
    if subject_reserved(sub):
        # Staff without a link, jobs and API keys act under these ids: a token claiming one
        # would pass for them in the audit trail and the approvals' distinct-people checks.
        raise AuthenticationFailed(
            "The token's `sub` is an id reserved for the engine's own actors.",
            code="invalid_token",
        )
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthenticationFailed("The token's `roles` must be a list.", code="invalid_token")
    if merchant_id is not None and (
        not isinstance(merchant_id, str) or not MERCHANT_ID.fullmatch(merchant_id)
    ):
        raise AuthenticationFailed("The token's `merchant_id` is invalid.", code="invalid_token")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or len(jti) > 128 or not jti.isprintable()):
        raise AuthenticationFailed("The token's `jti` is invalid.", code="invalid_token")
    known = tuple(r for r in roles if r in ROLE_PERMISSIONS)
    if "merchant_admin" in known and merchant_id is None:
        # merchant_admin reads its own merchant only; without a scope it would see them all.
        raise AuthenticationFailed(
            "A merchant_admin token must carry `merchant_id`.", code="invalid_token"
        )
    # The actor's role (ledger entries, audit rows): the most privileged of the token's roles;
    # HasPermission narrows it to the one holding the permission a request uses.
    actor = Actor(
        id=sub,
        role=next((r for r in ROLE_ORDER if r in known), "none"),
        ip=client_ip(request),
        user_agent=user_agent(request),
        merchant_id=merchant_id,
        credential_id=f"jwt:{jti or sub}"[:128],
    )
    return Caller(
        actor=actor,
        roles=known,
        permissions=permissions_for_roles(known),
        merchant_id=merchant_id,
        credential_type="jwt",
        credential_id=actor.credential_id,
    )


# The caller of each token lately used, per what else its actor records (client address,
# user agent): an integration sends the same token from the same place for minutes, and
# building the caller (claims checked, roles mapped to permissions, the address parsed) costs
# as much as the cached verification. A hit needs the very claims object `jwt_claims` answers
# now (a token verified anew, under another key, issuer or audience, builds a new caller);
# only callers that were built are kept, so a refusal is decided again each time. Bounded:
# cleared when full.
_CALLERS: dict[tuple, tuple[dict, Caller]] = {}
CALLERS_MAX = 1024


def caller_for_token(token: str, request) -> Caller:
    claims = jwt_claims(token)
    meta = request.META
    key = (
        token,
        meta.get("REMOTE_ADDR"),
        meta.get("HTTP_X_FORWARDED_FOR"),
        meta.get("HTTP_USER_AGENT"),
        getattr(settings, "LOYALTY_API_NUM_PROXIES", 0),
    )
    cached = _CALLERS.get(key)
    if cached is not None and cached[0] is claims:
        return cached[1]
    caller = caller_from_claims(claims, request)
    if len(_CALLERS) >= CALLERS_MAX:
        _CALLERS.clear()
    _CALLERS[key] = (claims, caller)
    return caller


class JWTAuthentication(BaseAuthentication):
    """`Authorization: Bearer <JWT>` signed by Molam ID (RS256 or ES256)."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Malformed token.") from exc
        caller = caller_for_token(token, request)
        return _bind(request, caller), token

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) when no credential is given.
        return 'Bearer realm="molam-loyalty", Api-Key realm="molam-loyalty"'


class APIKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <prefix.secret>` (or `X-Api-Key`): a merchant API key."""

    keyword = b"api-key"

    def authenticate(self, request):
        parts = authorization_header(request).split()
        if parts and parts[0].lower() == self.keyword:
            if len(parts) != 2:
                raise AuthenticationFailed("Malformed Authorization header.")
            raw = parts[1]
        elif request.META.get("HTTP_X_API_KEY"):
            raw = request.META["HTTP_X_API_KEY"].encode("latin-1", "replace")
        else:
            return None
        try:
            key = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Invalid API key.") from exc
        api_key = api_key_verify(key)
        actor = Actor(
            id=f"apikey:{api_key.prefix}",
            role="api_key",
            ip=client_ip(request),
            user_agent=user_agent(request),
            merchant_id=api_key.merchant_id,
            credential_id=f"apikey:{api_key.prefix}",
        )
        caller = Caller(
            actor=actor,
            roles=(),
            permissions=frozenset(api_key.permissions) & API_KEY_PERMISSIONS,
            merchant_id=api_key.merchant_id,
            credential_type="api_key",
            credential_id=actor.credential_id,
        )
        return _bind(request, caller), api_key

    def authenticate_header(self, request) -> str:
        return 'Api-Key realm="molam-loyalty"'


# What a request needs of its key: `revoked` too, which the model reads on init.
API_KEY_FIELDS = (
    "id",
    "prefix",
    "hashed_key",
    "revoked",
    "expiry_date",
    "merchant_id",
    "permissions",
)


def api_key_verify(key: str) -> MerchantAPIKey:
    """The usable key for `key` (not revoked, not expired), or AuthenticationFailed.

    As `MerchantAPIKey.objects.get_from_key` (the key's prefix finds its row, the hash of the
    whole key must match), read with one statement of fixed text: this runs on every request
    of an integration. Revocation and expiry are read fresh each time."""
    # Keys are printable ASCII: a control character (a NUL, which no database text holds)
    # makes a wrong key, not a refused value.
    if "." not in key or len(key) > 200 or not key.isprintable():
        raise AuthenticationFailed("Invalid API key.")
    prefix = key.partition(".")[0]
    api_key = row_get(MerchantAPIKey, API_KEY_FIELDS, prefix=prefix)
    # `is_valid` is the library's check: the hash of the whole key, upgraded in place when an
    # older hasher made it.
    if api_key is None or api_key.revoked or not api_key.is_valid(key):
        raise AuthenticationFailed("Invalid API key.")
    if api_key.has_expired:
        raise AuthenticationFailed("The API key has expired.")
    return api_key
