"""The password-reset email: promised by the web request, written and sent by a worker.

The request writes an outbox row (with the sealed request context) and enqueues it,
the same work whether or not the address has an account, so neither the page nor its
timing tells who is registered. The worker builds the link with
``url_for(_external=True)`` in the replayed request: on the scheme, host and prefix the
user used (one of ``TRUSTED_HOSTS``). The link's token is signed with ``SECRET_KEY``,
expires after ``PASSWORD_RESET_MAX_AGE`` seconds and carries a fingerprint of the
password hash, so it works once and stops working when the password changes.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, render_template, url_for
from flask_babel import gettext
from flask_celery_request import current_context
from itsdangerous import BadData, URLSafeTimedSerializer

from app import accounts, outbox
from app.email import send_email
from app.extensions import db
from app.i18n import N_, language_of
from app.models import DeliveryStatus, EmailDelivery, User, utcnow

KIND = "password_reset"
_SEND_TASK_KEY = "microblog.password_reset_task"
_SALT = "microblog.password-reset"
SUBJECT = N_("[Microblog] Reset your password")


def init_app(app, send_task) -> None:
    """Send reset emails with ``send_task`` (a Celery task taking the delivery id)."""
    app.extensions[_SEND_TASK_KEY] = send_task


def request_reset(email: str) -> None:
    """Promise a reset email to the owner of ``email``, if there is one. Commits."""
    db.session.commit()  # a fresh write transaction (see app.jobs.launch_task)
    user = accounts.user_by_email(email)
    token = current_context()
    delivery = EmailDelivery(
        kind=KIND, user_id=user.id if user is not None else None,
        recipient=user.email if user is not None else email.strip()[:120],
        status=DeliveryStatus.PENDING, attempts=0, request_context=token,
    )
    db.session.add(delivery)
    db.session.commit()
    outbox.enqueue(current_app.extensions[_SEND_TASK_KEY], delivery.id, token)


def _serializer() -> URLSafeTimedSerializer:
    config = current_app.config
    # Oldest first: itsdangerous signs with the last key and verifies with all of them.
    keys = [*config.get("SECRET_KEY_FALLBACKS", []), config["SECRET_KEY"]]
    return URLSafeTimedSerializer(keys, salt=_SALT)


def _fingerprint(user: User) -> str:
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()[:16]


def make_token(user: User) -> str:
    return _serializer().dumps({"user": user.id, "password": _fingerprint(user)})


def user_for_token(token: str) -> User | None:
    """The user a reset token is for; None when it is forged, expired, already used or
    made before the password last changed."""
    try:
        claims = _serializer().loads(token, max_age=current_app.config["PASSWORD_RESET_MAX_AGE"])
        user = db.session.get(User, int(claims["user"]))
        fingerprint = str(claims["password"])
    except (BadData, KeyError, TypeError, ValueError):
        return None
    if user is None or not hmac.compare_digest(fingerprint, _fingerprint(user)):
        return None
    return user


def reset_password(user: User, password: str) -> None:
    """Set the new password: the link stops working and every session of the user ends."""
    accounts.change_password(user, password)


def send_reset(delivery: EmailDelivery) -> bool:
    """Render and send the email (in a worker), in the language of the page it was asked
    from; False if there is nobody to send it to, or its link would arrive already expired."""
    user = db.session.get(User, delivery.user_id) if delivery.user_id is not None else None
    if user is None:
        outbox.finish(delivery.id, DeliveryStatus.SKIPPED, "no account has this address")
        return False
    max_age = current_app.config["PASSWORD_RESET_MAX_AGE"]
    if delivery.created < utcnow() - timedelta(seconds=max_age):
        outbox.finish(delivery.id, DeliveryStatus.SKIPPED, "requested too long ago; the link would have expired")
        return False
    context = dict(
        user=user,
        reset_url=url_for("auth.reset_password", token=make_token(user), _external=True),
        request_url=url_for("auth.reset_password_request", _external=True),
        valid_minutes=max_age // 60,
    )
    with language_of(user):
        send_email(gettext(SUBJECT), [user.email], render_template("email/reset_password.txt", **context),
                   render_template("email/reset_password.html", **context))
    outbox.finish(delivery.id, DeliveryStatus.SENT)
    return True


def requeue_stalled(grace: timedelta = timedelta(minutes=10)) -> int:
    """Re-send reset emails still pending ``grace`` after they were asked for (their
    enqueue failed), while their link can still be of use."""
    now = utcnow()
    too_old = now - timedelta(seconds=current_app.config["PASSWORD_RESET_MAX_AGE"])
    db.session.execute(
        sa.update(EmailDelivery)
        .where(EmailDelivery.kind == KIND, EmailDelivery.status == DeliveryStatus.PENDING,
               EmailDelivery.created <= too_old)
        .values(status=DeliveryStatus.SKIPPED, updated=now,
                last_error="never enqueued while its link could still be used")
    )
    db.session.commit()
    stalled = db.session.execute(
        sa.select(EmailDelivery.id, EmailDelivery.request_context).where(
            EmailDelivery.kind == KIND, EmailDelivery.status == DeliveryStatus.PENDING,
            EmailDelivery.attempts == 0, EmailDelivery.created < now - grace,
        )
    ).all()
    send_task = current_app.extensions[_SEND_TASK_KEY]
    return sum(outbox.enqueue(send_task, delivery_id, token) for delivery_id, token in stalled)
