"""The welcome email: scheduled when a user row is committed, sent by a worker later.

An ``after_insert`` event writes an :class:`EmailDelivery` row in the same transaction
as the user (with the sealed request context of the registration), and an
``after_commit`` event enqueues it with ``countdown=WELCOME_EMAIL_DELAY``. A rolled-back
user leaves nothing behind; a broker outage leaves a pending row that
:func:`requeue_stalled_deliveries` sends later, with the same request context.
"""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, has_request_context, render_template, url_for
from flask_babel import gettext
from flask_celery_request import current_context

from app import outbox
from app.email import send_email
from app.extensions import db
from app.i18n import language_of
from app.models import DeliveryStatus, EmailDelivery, User, utcnow

KIND = "welcome"
_PENDING_KEY = "welcome_deliveries"
_SEND_TASK_KEY = "microblog.welcome_email_task"


def _on_user_insert(mapper, connection, user: User) -> None:
    token = current_context() if has_request_context() else None
    delivery_id = connection.execute(
        sa.insert(EmailDelivery).values(
            kind=KIND, user_id=user.id, recipient=user.email, status=DeliveryStatus.PENDING,
            attempts=0, request_context=token, created=utcnow(), updated=utcnow(),
        )
    ).inserted_primary_key[0]
    session = sa.orm.object_session(user)
    session.info.setdefault(_PENDING_KEY, []).append((delivery_id, token))


def _on_commit(session) -> None:
    for delivery_id, token in session.info.pop(_PENDING_KEY, []):
        enqueue(delivery_id, token)


def _on_rollback(session) -> None:
    session.info.pop(_PENDING_KEY, None)


def init_app(app, send_task) -> None:
    """Listen for new users (once per process: the events are on the classes), and
    send their emails with ``send_task`` (a Celery task taking the delivery id): the
    factory hands it over, so this service never imports the task module."""
    app.extensions[_SEND_TASK_KEY] = send_task
    if not sa.event.contains(User, "after_insert", _on_user_insert):
        sa.event.listen(User, "after_insert", _on_user_insert)
        sa.event.listen(db.session, "after_commit", _on_commit)
        sa.event.listen(db.session, "after_soft_rollback", lambda session, _tx: _on_rollback(session))


def enqueue(delivery_id: int, token: str | None, countdown: float | None = None) -> bool:
    """Send the delivery's task; False (logged, row left pending) if the broker is down."""
    delay = current_app.config["WELCOME_EMAIL_DELAY"] if countdown is None else countdown
    return outbox.enqueue(current_app.extensions[_SEND_TASK_KEY], delivery_id, token, countdown=delay)


def requeue_stalled_deliveries(grace: timedelta = timedelta(minutes=10)) -> int:
    """Re-send deliveries still pending well after their eta (their enqueue failed)."""
    cutoff = utcnow() - timedelta(seconds=current_app.config["WELCOME_EMAIL_DELAY"]) - grace
    stalled = db.session.execute(
        sa.select(EmailDelivery.id, EmailDelivery.request_context).where(
            EmailDelivery.kind == KIND, EmailDelivery.status == DeliveryStatus.PENDING,
            EmailDelivery.attempts == 0, EmailDelivery.created < cutoff,
        )
    ).all()
    return sum(enqueue(delivery_id, token, countdown=0) for delivery_id, token in stalled)


def send_welcome(delivery: EmailDelivery) -> bool:
    """Render and send the email, in the language the visitor registered in; False if
    there is nobody to send it to any more."""
    user = db.session.get(User, delivery.user_id) if delivery.user_id is not None else None
    if user is None:
        outbox.finish(delivery.id, DeliveryStatus.SKIPPED, "the user was deleted before the email was sent")
        return False
    context = dict(
        user=user,
        profile_url=url_for("main.user", username=user.username, _external=True),
        login_url=url_for("auth.login", _external=True),
    )
    with language_of(user):
        send_email(gettext("[Microblog] Welcome to Microblog!"), [user.email],
                   render_template("email/welcome.txt", **context),
                   render_template("email/welcome.html", **context))
    outbox.finish(delivery.id, DeliveryStatus.SENT)
    return True
