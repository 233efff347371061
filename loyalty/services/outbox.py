"""Business events for webhooks, written in the transaction of the change they describe."""

from ..models import OutboxEvent, Program


def outbox_publish(*, program: Program, event_type: str, payload: dict) -> OutboxEvent:
    return OutboxEvent.objects.create(
        merchant_id=program.merchant_id,
        program=program,
        event_type=event_type,
        payload={"program_id": str(program.pk), **payload},
    )
