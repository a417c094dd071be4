"""The email outbox: a row per email promised, claimed by one run at a time.

A delivery is written in the transaction of its cause (a new user, a finished export),
so a broker outage loses nothing; a worker claims it atomically before sending, so a
redelivered message never sends it twice; every failure is kept on the row.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app
from flask_celery_request import CONTEXT_HEADER

from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, utcnow


def enqueue(send_task, delivery_id: int, token: str | None, countdown: float = 0) -> bool:
    """Send ``send_task(delivery_id)`` in the request recorded as ``token`` (sealed by
    the carrier); False, logged, with the row left pending for a re-send, if the broker
    is down."""
    headers = {CONTEXT_HEADER: token} if token else None
    try:
        send_task.apply_async((delivery_id,), countdown=countdown, headers=headers)
    except Exception as exc:
        current_app.logger.warning("Could not enqueue email %s (%r); it stays pending and will be re-sent",
                                   delivery_id, exc)
        return False
    return True


def forget_request_context(delivery_id: int) -> bool:
    """Forget a pending delivery's recorded request context (the worker refused it:
    expired, or sealed with a key no longer held). The row stays pending, so the next
    re-send sends it from outside any request: its links are then built on
    ``SERVER_NAME``. Not re-sent from here: a task sent from the refused task would
    inherit the refused context."""
    forgotten = db.session.execute(
        sa.update(EmailDelivery)
        .where(EmailDelivery.id == delivery_id, EmailDelivery.status == DeliveryStatus.PENDING)
        .values(request_context=None, updated=utcnow())
    ).rowcount
    db.session.commit()
    if not forgotten:
        return False
    current_app.logger.warning("Email %s: its request context was refused; it will be re-sent "
                               "without, with links on SERVER_NAME", delivery_id)
    return True


def claim(delivery_id: int) -> EmailDelivery | None:
    """Atomically take a pending (or retrying) delivery; None if another run has it."""
    claimed = db.session.execute(
        sa.update(EmailDelivery)
        .where(EmailDelivery.id == delivery_id,
               EmailDelivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]))
        .values(status=DeliveryStatus.SENDING, attempts=EmailDelivery.attempts + 1, updated=utcnow())
    ).rowcount
    db.session.commit()
    return db.session.get(EmailDelivery, delivery_id) if claimed == 1 else None


def finish(delivery_id: int, status: str, reason: str | None = None) -> None:
    """Leave the SENDING state this run claimed; a row no longer ours is left alone."""
    db.session.execute(
        sa.update(EmailDelivery)
        .where(EmailDelivery.id == delivery_id, EmailDelivery.status == DeliveryStatus.SENDING)
        .values(status=status, last_error=reason, updated=utcnow(),
                **({"sent_at": utcnow()} if status == DeliveryStatus.SENT else {}))
    )
    db.session.commit()


def record_failure(delivery_id: int, reason: str, *, final: bool) -> None:
    """A failed attempt: RETRYING, or FAILED (and logged, with the reason) when ``final``."""
    finish(delivery_id, DeliveryStatus.FAILED if final else DeliveryStatus.RETRYING, reason)
    delivery = db.session.get(EmailDelivery, delivery_id)
    if final and delivery is not None:
        current_app.logger.error("Giving up on %s email %s to %s after %d attempt(s): %s",
                                 delivery.kind, delivery.id, delivery.recipient, delivery.attempts, reason)


def failed_deliveries() -> list[EmailDelivery]:
    """The emails we gave up on, newest first (``flask mail-failures``)."""
    return list(db.session.scalars(
        sa.select(EmailDelivery).where(EmailDelivery.status == DeliveryStatus.FAILED)
        .order_by(EmailDelivery.updated.desc())
    ))
