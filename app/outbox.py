"""The email outbox: a row per email promised, claimed by one run at a time.

A delivery is written in the transaction of its cause (a new user, a finished export),
so a broker outage loses nothing; a worker claims it atomically before sending, so a
redelivered message never sends it twice; every failure is kept on the row.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, utcnow


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
