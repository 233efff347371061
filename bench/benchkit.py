"""What the HTTP benchmarks share: a JWT key pair and token, a bench program, a purchase.

Django must be set up before `jwt_token` and `bench_program` are called.
"""

import random
import time
import uuid
from decimal import Decimal

MODULES = ["eats", "shop", "rides"]


def keys() -> tuple[str, object]:
    """A fresh RSA key pair: (public key PEM for LOYALTY_JWT_PUBLIC_KEY, private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode(), private


def jwt_token(private, merchant_id: str) -> str:
    """An RS256 token of a `system` integration of `merchant_id`, valid for an hour."""
    import jwt
    from django.conf import settings

    now = int(time.time())
    claims = {
        "sub": "bench-checkout",
        "roles": ["system"],
        "merchant_id": merchant_id,
        "iss": settings.LOYALTY_JWT_ISSUER,
        "aud": settings.LOYALTY_JWT_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, private, algorithm="RS256")


def bench_program(merchant_id: str, label: str) -> str:
    """A new XOF program of `merchant_id` with a budget and a daily cap that never refuse."""
    from loyalty.actors import Actor
    from loyalty.services import program_create

    program = program_create(
        merchant_id=merchant_id,
        name=f"bench {label} {uuid.uuid4().hex[:6]}",
        currency="XOF",
        timezone="Africa/Dakar",
        earn_rate=Decimal("0.02"),
        point_value=Decimal("1"),
        expiry_days=365,
        budget_limit=Decimal("1000000000000"),
        max_earn_per_day=Decimal("1000000000"),
        sira_settings={},  # the seed's eight rules, on
        actor=Actor(id="bench", role="system"),
    )
    return str(program.pk)


def members_create(program_ids: list[str], members: int) -> None:
    """Balances of members u0 .. u<members - 1> in each program, up front (one INSERT per
    program), as in a running program: most events are by members who already have one."""
    from django.db import connection

    with connection.cursor() as cursor:
        for program_id in program_ids:
            cursor.execute(
                "INSERT INTO loyalty_memberbalance (program_id, member_id, points_balance,"
                " locked, lifetime_earned, lifetime_redeemed, lifetime_spend, tier, churn_risk,"
                " engagement_score, fraud_flags, is_frozen, earned_today, purchase_count,"
                " created_at, updated_at)"
                " SELECT %s, 'u' || n, 0, 0, 0, 0, 0, 'basic', 0, 0, '[]', false, 0, 0,"
                " now(), now() FROM generate_series(0, %s - 1) AS n",
                [program_id, members],
            )


def purchase(program_id: str, rng: random.Random, members: int) -> dict:
    """One purchase of a random member."""
    return {
        "program_id": program_id,
        "member_id": f"u{rng.randrange(members)}",
        "type": "purchase",
        "amount": str(rng.randrange(500, 20000, 25)),
        "currency": "XOF",
        "module": rng.choice(MODULES),
        "reference": f"order-{uuid.uuid4().hex[:16]}",
    }
