"""The export and the welcome email, end to end with RabbitMQ as the broker.

Only the stack's worker consumes from RabbitMQ and Redis is only the result backend, so
a task that got lost on its way (say, published to Redis) would never run and these
tests would time out.
"""
from __future__ import annotations

import json
import re

import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, DeliveryStatus, EmailDelivery, User
from tests.conftest import AuthActions
from tests.support.services import wait_until
from tests.test_export_flow import EXPORT_SUBJECT, _export_task, _links, _poll_until_finished

SITE = "https://rabbit.example.org/"
WELCOME_SUBJECT = "Welcome to Microblog"


def _all_links(message) -> list[str]:
    return (_links(message.message.get_body(("plain",)).get_content())
            + _links(message.message.get_body(("html",)).get_content()))


def _welcome_retries(worker_log: str) -> list[str]:
    return re.findall(r"Task app\.tasks\.send_welcome_email\[[0-9a-f-]+\] retry: Retry in", worker_log)


def _delivery(app, username: str) -> EmailDelivery:
    def row():
        with app.app_context():
            db.session.expire_all()
            found = db.session.scalar(sa.select(EmailDelivery).join(User, User.id == EmailDelivery.user_id)
                                      .where(User.username == username))
            if found is not None and found.status == DeliveryStatus.SENT:
                db.session.expunge(found)
                return found
            return None

    return wait_until(row, 30, message=f"the welcome email to {username} to be SENT")


def test_the_worker_consumes_from_rabbitmq(rabbit_stack, rabbitmq):
    broker = f"amqp://{rabbitmq.user}:**@127.0.0.1:{rabbitmq.port}/microblog"
    assert f"Connected to {broker}" in rabbit_stack.worker.log()


def test_export_from_click_to_email_to_download(rabbit_app, rabbit_stack, redis_service, mail_sink):
    auth = AuthActions(rabbit_app.test_client(), base_url=SITE)
    auth.signup("ann")
    bodies = ["first post", "second, with \"quotes\" and ✓"]
    for body in bodies:
        assert auth.post_form("/index", {"post": body}).status_code == 302

    response = auth.post_form("/export_posts", page="/user/ann")
    assert response.status_code == 302
    task = _export_task(rabbit_app, "ann")
    status, progress = _poll_until_finished(auth, task.id)
    assert (status["state"], status["progress"], status["error"]) == ("SUCCESS", 100, None)
    assert progress == sorted(progress)

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert message.recipients == ["ann@example.com"]
    links = _all_links(message)
    assert f"{SITE}exports/{task.id}" in links and f"{SITE}user/ann" in links
    assert all(link.startswith(SITE) for link in links)
    (attachment,) = list(message.message.iter_attachments())
    attached = json.loads(attachment.get_content())
    assert [post["body"] for post in attached["posts"]] == bodies
    downloaded = auth.get(f"/exports/{task.id}")
    assert downloaded.status_code == 200 and json.loads(downloaded.data) == attached

    def audited():  # written by the after_request hook of the replayed request
        with rabbit_app.app_context():
            return db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "export_posts"))

    event = wait_until(audited, 10, message="the worker's audit event")
    assert event.via_worker and event.task_id == task.id
    assert (event.host, event.path) == ("rabbit.example.org", "/export_posts")

    results = redis_service.client(rabbit_stack.redis_db)  # the result backend stays Redis
    stored = wait_until(lambda: results.get(f"celery-task-meta-{task.id}"), 10, message="the result in Redis")
    assert json.loads(stored)["status"] == "SUCCESS"


def test_welcome_email_links_to_the_registration_host(rabbit_app, mail_sink):
    auth = AuthActions(rabbit_app.test_client(), base_url=SITE)
    assert auth.register("wendy").status_code == 302
    (message,) = mail_sink.wait_for(1, subject=WELCOME_SUBJECT)
    assert message.recipients == ["wendy@example.com"]
    links = _all_links(message)
    assert f"{SITE}user/wendy" in links and f"{SITE}auth/login" in links
    assert all(link.startswith(SITE) for link in links)
    assert _delivery(rabbit_app, "wendy").attempts == 1


def test_a_welcome_email_retried_through_rabbitmq_keeps_its_links(rabbit_app, rabbit_stack, mail_sink):
    """The retry is a new message with a countdown: it must carry the context again."""
    retries_before = len(_welcome_retries(rabbit_stack.worker.log()))
    mail_sink.scripted_replies.append("451 4.3.0 try again later")
    auth = AuthActions(rabbit_app.test_client(), base_url=SITE)
    assert auth.register("tina").status_code == 302
    (message,) = mail_sink.wait_for(1, subject=WELCOME_SUBJECT)
    assert _delivery(rabbit_app, "tina").attempts == 2
    assert f"{SITE}user/tina" in _all_links(message)
    assert all(link.startswith(SITE) for link in _all_links(message))
    assert len(_welcome_retries(rabbit_stack.worker.log())) == retries_before + 1


def test_health_check_reaches_rabbitmq(rabbit_app):
    response = rabbit_app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["checks"]["broker"]["ok"] is True
