"""Business events for webhooks, written in the transaction of the change they describe."""

from ..models import OutboxEvent, Program


def outbox_event(*, program: Program, event_type: str, payload: dict) -> OutboxEvent:
    """The event, not saved: a job writes many in one insert."""
    return OutboxEvent(
        merchant_id=program.merchant_id,
        program=program,
        event_type=event_type,
        payload={"program_id": str(program.pk), **payload},
    )


def outbox_publish(*, program: Program, event_type: str, payload: dict) -> OutboxEvent:
    event = outbox_event(program=program, event_type=event_type, payload=payload)
    event.save(force_insert=True)
    return event
