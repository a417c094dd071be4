"""The welcome email on PostgreSQL: the outbox row written with the user, claimed once,
retried on a transient SMTP reply, and nothing for a user whose insert was rolled back."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, User
from app.tasks import send_welcome_email
from tests.conftest import AuthActions
from tests.support.services import wait_until
from tests.test_welcome import SUBJECT, _delivery, _links, _wait_for_status

SITE = "https://hello.example.org/"


@pytest.fixture
def app(make_pg_app):
    """Welcome emails go out at once, as in testing."""
    return make_pg_app(WELCOME_EMAIL_DELAY="0")


def _welcome_to(sink, address: str):
    """The one welcome email to ``address``, once it has arrived."""
    mine = wait_until(lambda: [m for m in sink.received(SUBJECT) if m.recipients == [address]], 30,
                      message=f"the welcome email to {address}")
    assert len(mine) == 1, [m.recipients for m in sink.received()]
    return mine[0]


def test_the_welcome_email_is_sent_once_with_links_on_the_registration_host(app, mail_sink):
    auth = AuthActions(app.test_client(), base_url=SITE)
    assert auth.register("wendy").status_code == 302
    message = _welcome_to(mail_sink, "wendy@example.com")
    assert f"{SITE}user/wendy" in _links(message) and f"{SITE}auth/login" in _links(message)
    assert all(link.startswith(SITE) for link in _links(message))
    delivery = _wait_for_status(app, _delivery(app, "wendy").id, DeliveryStatus.SENT)
    assert delivery.attempts == 1
    assert abs(delivery.sent_at - datetime.now(timezone.utc)) < timedelta(minutes=5)  # UTC, read back aware

    # A duplicate message finds the row claimed and sent: nothing is sent twice.
    assert send_welcome_email.delay(delivery.id).get(timeout=30) == "not pending"
    assert [m.recipients for m in mail_sink.received(SUBJECT)] == [["wendy@example.com"]]


def test_a_transient_smtp_reply_is_retried_and_each_attempt_counted(app, mail_sink):
    mail_sink.scripted_replies.append("451 4.3.0 try again later")
    auth = AuthActions(app.test_client(), base_url=SITE)
    assert auth.register("tina").status_code == 302
    _welcome_to(mail_sink, "tina@example.com")
    delivered = _wait_for_status(app, _delivery(app, "tina").id, DeliveryStatus.SENT)
    assert delivered.attempts == 2 and delivered.last_error is None


def test_a_rolled_back_user_leaves_no_delivery_and_no_email(app, mail_sink):
    with app.test_request_context("/auth/register", base_url=SITE):
        db.session.add(User(username="phantom", email="phantom@example.com"))
        db.session.flush()  # the insert event writes the outbox row here, in the same transaction
        assert db.session.scalar(sa.select(sa.func.count(EmailDelivery.id))) == 1
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count(EmailDelivery.id))) == 0
        db.session.add(User(username="real", email="real@example.com"))
        db.session.commit()  # an unrelated commit must not send the rolled-back user's email
    _welcome_to(mail_sink, "real@example.com")
    _wait_for_status(app, _delivery(app, "real").id, DeliveryStatus.SENT)
    assert all(m.recipients != ["phantom@example.com"] for m in mail_sink.received())
