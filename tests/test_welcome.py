"""The welcome email: scheduled after commit, retried with backoff, links on the user's host.

The tests run their own worker (on its own Redis database, sharing the live database)
whose SMTP port they control, so they can keep the mail server down and bring it up.
"""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, User
from tests.conftest import AuthActions, empty_database
from tests.support.services import wait_until
from tests.support.stacks import MailControlledStack

SITE = "https://welcome.example.org/"
SUBJECT = "Welcome to Microblog"


@pytest.fixture(scope="module")
def welcome_stack(live_stack, redis_service, tmp_path_factory):
    """A worker on a Redis database of its own that mails to a port where nothing listens
    until a test says so."""
    stack = MailControlledStack(live_stack.environ, redis_service, tmp_path_factory.mktemp("welcome"))
    yield stack
    stack.stop()


@pytest.fixture
def welcome_app(welcome_stack):
    app = welcome_stack.app()
    yield app
    empty_database(app)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def smtp_up(welcome_stack):
    """Start a real SMTP server on the stack's port; stop it afterwards."""
    yield welcome_stack.start_smtp
    welcome_stack.stop_smtp()


def _delivery(app, username: str) -> EmailDelivery | None:
    with app.app_context():
        db.session.expire_all()
        return db.session.scalar(
            sa.select(EmailDelivery).join(User, User.id == EmailDelivery.user_id).where(User.username == username)
        )


def _wait_for_status(app, delivery_id: int, *statuses: str, timeout: float = 30) -> EmailDelivery:
    def reached():
        with app.app_context():
            db.session.expire_all()
            row = db.session.get(EmailDelivery, delivery_id)
            if row is not None and row.status in statuses:
                db.session.expunge(row)
                return row
            return None

    return wait_until(reached, timeout, message=f"delivery {delivery_id} to reach {statuses}")


def _links(message) -> list[str]:
    body = message.message.get_body(("plain",)).get_content()
    body += message.message.get_body(("html",)).get_content()
    return re.findall(r"https?://[^\s\"<>]+", body)


def test_welcome_email_arrives_with_links_on_the_registration_host(welcome_app, smtp_up):
    sink = smtp_up()
    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    assert auth.register("wendy").status_code == 302
    (message,) = sink.wait_for(1, subject=SUBJECT)
    assert message.recipients == ["wendy@example.com"]
    assert f"{SITE}user/wendy" in _links(message) and f"{SITE}auth/login" in _links(message)
    assert all(link.startswith(SITE) for link in _links(message))
    delivery = _wait_for_status(welcome_app, _delivery(welcome_app, "wendy").id, DeliveryStatus.SENT)
    assert delivery.attempts == 1 and delivery.sent_at is not None


def test_smtp_down_at_first_then_delivered_on_a_retry_with_the_same_links(welcome_app, smtp_up):
    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    assert auth.register("rita").status_code == 302
    delivery_id = _delivery(welcome_app, "rita").id
    failed_once = _wait_for_status(welcome_app, delivery_id, DeliveryStatus.RETRYING)
    assert "Connection refused" in failed_once.last_error or "ConnectionRefused" in failed_once.last_error

    sink = smtp_up()  # the server comes back
    (message,) = sink.wait_for(1, timeout=30, subject=SUBJECT)
    assert f"{SITE}user/rita" in _links(message)
    assert all(link.startswith(SITE) for link in _links(message))
    delivered = _wait_for_status(welcome_app, delivery_id, DeliveryStatus.SENT)
    assert delivered.attempts >= 2


def test_a_transient_4xx_reply_is_retried(welcome_app, smtp_up):
    sink = smtp_up()
    sink.scripted_replies.append("451 4.3.0 try again later")
    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    auth.register("tina")
    (message,) = sink.wait_for(1, subject=SUBJECT)
    delivered = _wait_for_status(welcome_app, _delivery(welcome_app, "tina").id, DeliveryStatus.SENT)
    assert delivered.attempts == 2 and message.recipients == ["tina@example.com"]


def test_a_rejected_recipient_is_not_retried_and_is_recorded(welcome_app, smtp_up, caplog):
    sink = smtp_up()
    sink.scripted_rcpt_replies.append("550 5.1.1 <nobody@example.com>: mailbox unavailable")
    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    auth.register("nobody")
    failed = _wait_for_status(welcome_app, _delivery(welcome_app, "nobody").id, DeliveryStatus.FAILED)
    assert failed.attempts == 1
    assert "550" in failed.last_error and "mailbox unavailable" in failed.last_error
    assert sink.received(SUBJECT) == []
    result = welcome_app.test_cli_runner().invoke(args=["mail-failures"])
    assert result.exit_code == 0
    assert "welcome to nobody@example.com" in result.output and "550" in result.output


def test_after_the_last_attempt_the_failure_is_logged_and_listed(welcome_app, welcome_stack):
    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    auth.register("gone")  # the SMTP server never comes up in this test
    failed = _wait_for_status(welcome_app, _delivery(welcome_app, "gone").id, DeliveryStatus.FAILED, timeout=60)
    assert failed.attempts == 4
    # The row is committed just before the line is logged: wait for this email's own line.
    wait_until(lambda: "to gone@example.com after 4 attempt(s): ConnectionRefusedError" in welcome_stack.worker.log(),
               10, message="the give-up line for gone@example.com in the worker log")


def test_a_user_deleted_before_the_eta_gets_nothing(welcome_stack, smtp_up):
    sink = smtp_up()
    app = welcome_stack.app(WELCOME_EMAIL_DELAY="2")
    try:
        auth = AuthActions(app.test_client(), base_url=SITE)
        auth.register("fleeting")
        delivery_id = _delivery(app, "fleeting").id
        with app.app_context():
            db.session.delete(db.session.scalar(sa.select(User).where(User.username == "fleeting")))
            db.session.commit()
        skipped = _wait_for_status(app, delivery_id, DeliveryStatus.SKIPPED, timeout=30)
        assert skipped.user_id is None and "deleted" in skipped.last_error
        assert sink.received(SUBJECT) == []
    finally:
        empty_database(app)


def test_a_rolled_back_user_leaves_no_delivery_and_no_email(welcome_app, smtp_up):
    sink = smtp_up()
    with welcome_app.test_request_context("/auth/register", base_url=SITE):
        user = User(username="phantom", email="phantom@example.com")
        db.session.add(user)
        db.session.flush()  # the insert event fires here, before any commit
        assert db.session.scalar(sa.select(sa.func.count(EmailDelivery.id))) == 1
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count(EmailDelivery.id))) == 0
        # A later, unrelated commit must not send the rolled-back user's email.
        db.session.add(User(username="real", email="real@example.com"))
        db.session.commit()
    (message,) = sink.wait_for(1, subject=SUBJECT)
    assert message.recipients == ["real@example.com"]
    assert all(m.recipients != ["phantom@example.com"] for m in sink.received())
    _wait_for_status(welcome_app, _delivery(welcome_app, "real").id, DeliveryStatus.SENT)


def test_broker_down_at_registration_the_email_is_sent_later_with_the_same_links(welcome_stack, smtp_up,
                                                                                 tmp_path):
    sink = smtp_up()
    dead_broker = f"redis+socket://{tmp_path / 'nothing-here.sock'}"
    down = welcome_stack.app(REDIS_URL=dead_broker)
    auth = AuthActions(down.test_client(), base_url=SITE)
    assert auth.register("patient").status_code == 302  # registration still works
    delivery = _delivery(down, "patient")
    assert delivery.status == DeliveryStatus.PENDING and delivery.request_context

    up = welcome_stack.app()  # the broker is back (and the app rebinds Celery to it)
    with up.app_context():
        from datetime import timedelta

        from app.welcome import requeue_stalled_deliveries

        assert requeue_stalled_deliveries(grace=timedelta(seconds=-60)) == 1
    (message,) = sink.wait_for(1, subject=SUBJECT)
    assert f"{SITE}user/patient" in _links(message)
    _wait_for_status(up, delivery.id, DeliveryStatus.SENT)
    empty_database(up)


def test_email_helpers_classify_failures_and_back_off_with_jitter():
    import smtplib

    from app.email import backoff_seconds, describe_failure, is_transient

    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(TimeoutError("timed out"))
    assert is_transient(smtplib.SMTPServerDisconnected("gone"))
    assert is_transient(smtplib.SMTPDataError(451, b"try later"))
    assert not is_transient(smtplib.SMTPDataError(554, b"rejected"))
    assert not is_transient(smtplib.SMTPRecipientsRefused({"a@b.c": (550, b"no such user")}))
    assert is_transient(smtplib.SMTPRecipientsRefused({"a@b.c": (450, b"greylisted")}))
    assert not is_transient(ValueError("a bug, not the network"))
    assert describe_failure(smtplib.SMTPRecipientsRefused({"a@b.c": (550, b"no such user")})) == \
        "recipient refused (a@b.c: 550 no such user)"
    assert [backoff_seconds(n, 10, 1000, rand=lambda: 1.0) for n in range(4)] == [10, 20, 40, 80]
    assert backoff_seconds(20, 10, 1000, rand=lambda: 1.0) == 1000
    assert backoff_seconds(3, 10, 1000, rand=lambda: 0.0) == 40


# --- the password-reset email goes through the same outbox and retry policy -----------------


def test_a_reset_email_is_retried_like_the_welcome_email_until_the_smtp_server_returns(welcome_app, smtp_up):
    from app.password_reset import KIND as RESET

    auth = AuthActions(welcome_app.test_client(), base_url=SITE)
    assert auth.register("rhea").status_code == 302
    token = auth.csrf_token("/auth/reset_password_request")
    assert auth.post("/auth/reset_password_request",
                     data={"email": "rhea@example.com", "csrf_token": token}).status_code == 302
    with welcome_app.app_context():
        reset_id = db.session.scalar(sa.select(EmailDelivery.id).where(EmailDelivery.kind == RESET))
    failed_once = _wait_for_status(welcome_app, reset_id, DeliveryStatus.RETRYING)
    assert "Connection refused" in failed_once.last_error or "ConnectionRefused" in failed_once.last_error

    sink = smtp_up()
    (message,) = sink.wait_for(1, timeout=30, subject="Reset your password")
    assert message.recipients == ["rhea@example.com"]
    assert any(link.startswith(f"{SITE}auth/reset_password/") for link in _links(message))
    assert _wait_for_status(welcome_app, reset_id, DeliveryStatus.SENT).attempts >= 2
