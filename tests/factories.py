"""factory_boy factories for inputs; programs are made through the service (make_program)."""

import uuid
from decimal import Decimal

import factory

from loyalty.services import EventInput


class PurchaseFactory(factory.Factory):
    class Meta:
        model = EventInput

    type = "purchase"
    member_id = factory.Sequence(lambda n: f"u_{n}")
    idempotency_key = factory.LazyFunction(lambda: f"evt-{uuid.uuid4()}")
    amount = Decimal("10000")
    currency = "XOF"
    module = "shop"
    reference = factory.Sequence(lambda n: f"order-{n}")


class RefundFactory(PurchaseFactory):
    type = "refund"
    reference = factory.Sequence(lambda n: f"refund-{n}")
    original_reference = "order-0"


class PointsEventFactory(factory.Factory):
    class Meta:
        model = EventInput

    type = "referral"
    member_id = factory.Sequence(lambda n: f"u_{n}")
    idempotency_key = factory.LazyFunction(lambda: f"evt-{uuid.uuid4()}")
    points = Decimal("100")
    reason = "referred a friend"
