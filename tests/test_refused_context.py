"""What the app does when the worker refuses a task's carried request (the extension
raises ContextRefused before the task body): nothing is left running, nothing is lost.

A task with an expired context is published by hand to the live worker, as a message
queued long ago would arrive.
"""
from __future__ import annotations

import time
import uuid
from datetime import timedelta

import sqlalchemy as sa

from app import welcome
from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, Task, TaskState, User
from app.tasks import CONTEXT_REFUSED_MESSAGE, export_posts, send_welcome_email
from flask_celery_request import CONTEXT_HEADER
from tests.support.services import wait_until


def _expired_context(app) -> str:
    sealer = app.extensions["flask_celery_request"].sealer
    with app.test_request_context("/export_posts", method="POST", base_url="https://old.example/"):
        plaintext = sealer.encode({"e": {"HTTP_HOST": "old.example", "wsgi.url_scheme": "https"}})
    return sealer.seal(plaintext, now=time.time() - app.config["CELERY_CONTEXT_MAX_AGE"] - 60)


def _user(app, name: str) -> int:
    with app.app_context():
        user = User(username=name, email=f"{name}@example.com")
        user.set_password("correct horse")
        db.session.add(user)
        db.session.commit()
        return user.id


def test_an_export_refused_for_its_context_ends_failed_with_a_reason(live_app, live_stack):
    user_id = _user(live_app, "olga")
    task_id = str(uuid.uuid4())
    with live_app.app_context():
        db.session.add(Task(id=task_id, name="export_posts", description="Exporting posts...",
                            user_id=user_id, state=TaskState.PENDING))
        db.session.commit()
        result = export_posts.apply_async((user_id,), task_id=task_id,
                                          headers={CONTEXT_HEADER: _expired_context(live_app)})

    def row_finished():
        with live_app.app_context():
            db.session.expire_all()
            row = db.session.get(Task, task_id)
            return row if row.finished is not None else None

    row = wait_until(row_finished, 30, message="the refused export's row to finish")
    assert row.state == TaskState.FAILURE and row.error == CONTEXT_REFUSED_MESSAGE
    assert "has expired" in str(result.get(timeout=10, propagate=False))
    assert "has expired" in live_stack.worker.log()


def test_a_welcome_email_refused_for_its_context_forgets_it_and_stays_pending(live_app, live_stack):
    user_id = _user(live_app, "petra")
    token = _expired_context(live_app)
    with live_app.app_context():
        # As a broker that kept the message for longer than CELERY_CONTEXT_MAX_AGE
        # would deliver it: a pending row of its own, with its recorded context.
        delivery = EmailDelivery(kind=welcome.KIND, user_id=user_id, recipient="petra@example.com",
                                 status=DeliveryStatus.PENDING, attempts=0, request_context=token)
        db.session.add(delivery)
        db.session.commit()
        delivery_id = delivery.id
        send_welcome_email.apply_async((delivery_id,), headers={CONTEXT_HEADER: token})

    def context_forgotten():
        with live_app.app_context():
            db.session.expire_all()
            row = db.session.get(EmailDelivery, delivery_id)
            return row if row.request_context is None else None

    row = wait_until(context_forgotten, 30, message="the refused context to be forgotten")
    assert row.status == DeliveryStatus.PENDING and row.attempts == 0
    # Beat's re-send picks it up, now from outside any request.
    with live_app.app_context():
        stalled = db.session.scalars(sa.select(EmailDelivery.id).where(
            EmailDelivery.status == DeliveryStatus.PENDING, EmailDelivery.request_context.is_(None))).all()
        assert delivery_id in stalled
        assert welcome.requeue_stalled_deliveries(grace=timedelta(seconds=-5)) >= 1
