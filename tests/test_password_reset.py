"""Password reset by email: asked for on the web, mailed by the real worker with links on
the scheme, host and prefix the user used, through the outbox; the link works once, for
PASSWORD_RESET_MAX_AGE seconds, and not after the password changes."""
from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa

from app import accounts, password_reset
from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, User
from tests.conftest import AuthActions
from tests.support.services import wait_until

SITE = "https://reset.example.org/blog/"
SUBJECT = "Reset your password"
PASSWORD = "correct horse"
NEW_PASSWORD = "lantern quiet mango"
SENT_FLASH = "If an account has that address, an email with a link to reset its password is on its way."


def _ask(auth: AuthActions, email: str):
    token = auth.csrf_token("/auth/reset_password_request")
    return auth.post("/auth/reset_password_request", data={"email": email, "csrf_token": token})


def _links(message) -> tuple[list[str], list[str]]:
    text = message.message.get_body(("plain",)).get_content()
    html = message.message.get_body(("html",)).get_content()
    find = re.compile(r"https?://[^\s\"<>]+").findall
    return find(text), find(html)


def _reset_link(message) -> str:
    text_links, html_links = _links(message)
    (link,) = [link for link in text_links if "/auth/reset_password/" in link]
    assert link in html_links
    return link


def _deliveries(app, recipient: str) -> list[EmailDelivery]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(EmailDelivery).where(
            EmailDelivery.kind == password_reset.KIND, EmailDelivery.recipient == recipient)))
        for row in rows:
            db.session.expunge(row)
        return rows


def _wait_for_delivery(app, recipient: str, status: str) -> EmailDelivery:
    def reached():
        rows = _deliveries(app, recipient)
        return rows[0] if rows and rows[0].status == status else None

    return wait_until(reached, 30, message=f"the reset email to {recipient} to be {status}")


def test_the_reset_email_links_to_the_host_and_prefix_used_and_the_link_works_once(live_app, mail_sink):
    AuthActions(live_app.test_client(), base_url=SITE).register("rosa")
    visitor = AuthActions(live_app.test_client(), base_url=SITE)
    response = _ask(visitor, "rosa@example.com")
    assert response.status_code == 302 and response.headers["Location"] == "/blog/auth/login"
    assert SENT_FLASH in visitor.get("/auth/login").get_data(as_text=True)

    (message,) = mail_sink.wait_for(1, subject=SUBJECT)
    assert message.recipients == ["rosa@example.com"]
    text_links, html_links = _links(message)
    assert text_links and all(link.startswith(SITE) for link in text_links + html_links)
    link = _reset_link(message)
    assert link.startswith(f"{SITE}auth/reset_password/")
    assert "works once, for 60 minutes" in message.message.get_body(("plain",)).get_content()
    delivery = _wait_for_delivery(live_app, "rosa@example.com", DeliveryStatus.SENT)
    assert delivery.attempts == 1 and delivery.request_context  # the outbox row, sealed context kept

    path = link[len(SITE) - 1:]
    page = visitor.get(path)
    assert page.status_code == 200 and "rosa" in page.get_data(as_text=True)
    token = visitor.csrf_token(path)
    weak = visitor.post(path, data={"password": "rosa1234", "password2": "rosa1234", "csrf_token": token})
    assert weak.status_code == 400 and "Do not build your password" in weak.get_data(as_text=True)
    done = visitor.post(path, data={"password": NEW_PASSWORD, "password2": NEW_PASSWORD, "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/blog/auth/login"
    assert visitor.login("rosa", PASSWORD).status_code == 401
    assert visitor.login("rosa", NEW_PASSWORD).status_code == 302
    visitor.logout()

    again = visitor.get(path)  # used: the password it was made for is gone
    assert again.status_code == 302 and again.headers["Location"] == "/blog/auth/reset_password_request"
    assert "expired or has already been used" in visitor.get("/auth/reset_password_request").get_data(as_text=True)


def test_an_unknown_address_gets_the_same_answer_and_no_email(live_app, mail_sink):
    AuthActions(live_app.test_client()).register("kim")
    known, unknown = AuthActions(live_app.test_client()), AuthActions(live_app.test_client())
    answers = [_ask(known, "kim@example.com"), _ask(unknown, "nobody@example.com")]
    assert {(r.status_code, r.headers["Location"]) for r in answers} == {(302, "/auth/login")}
    pages = [auth.get("/auth/login").get_data(as_text=True) for auth in (known, unknown)]
    strip = re.compile(r'value="[^"]+"')  # the CSRF tokens differ
    assert strip.sub("", pages[0]) == strip.sub("", pages[1]) and SENT_FLASH in pages[0]

    # The same work was done for both: an outbox row each, handled by the worker.
    skipped = _wait_for_delivery(live_app, "nobody@example.com", DeliveryStatus.SKIPPED)
    assert skipped.user_id is None and skipped.last_error == "no account has this address"
    _wait_for_delivery(live_app, "kim@example.com", DeliveryStatus.SENT)
    assert [m.recipients for m in mail_sink.received(SUBJECT)] == [["kim@example.com"]]


def test_a_signed_in_user_is_sent_home_from_the_reset_pages(live_app):
    auth = AuthActions(live_app.test_client())
    auth.signup("lee")
    assert auth.get("/auth/reset_password_request").headers["Location"] == "/"


# --- the token, without the worker ----------------------------------------------------------


@pytest.fixture
def susan(app):
    with app.app_context():
        user = User(username="susan", email="susan@example.com")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        return user.id


def _token_made(app, user_id: int, seconds_ago: float, monkeypatch) -> str:
    real_time = time.time
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: real_time() - seconds_ago)
    with app.app_context():
        token = password_reset.make_token(db.session.get(User, user_id))
    monkeypatch.setattr("itsdangerous.timed.time.time", real_time)
    return token


def _valid(app, token: str) -> bool:
    with app.app_context():
        return password_reset.user_for_token(token) is not None


def test_a_token_works_until_its_hour_is_up(app, susan, monkeypatch):
    assert _valid(app, _token_made(app, susan, 3590, monkeypatch))
    assert not _valid(app, _token_made(app, susan, 3610, monkeypatch))


def test_a_token_stops_working_when_the_password_changes(app, susan):
    with app.app_context():
        token = password_reset.make_token(db.session.get(User, susan))
    assert _valid(app, token)
    with app.app_context():
        accounts.change_password(db.session.get(User, susan), NEW_PASSWORD)
    assert not _valid(app, token)


def test_forged_and_foreign_tokens_are_refused(app, make_app, susan, client):
    with app.app_context():
        token = password_reset.make_token(db.session.get(User, susan))
    other = make_app(SECRET_KEY="another-secret-key-entirely-0123")
    for forged in ("garbage", token[:-2] + "xx", token.replace(".", "", 1)):
        assert not _valid(app, forged), forged
    with other.app_context():
        assert password_reset.user_for_token(token) is None  # signed with another secret
    response = client.get(f"/auth/reset_password/{token[:-2]}xx")
    assert response.status_code == 302 and response.headers["Location"] == "/auth/reset_password_request"


def test_a_token_made_with_a_fallback_key_still_works(make_app, app, susan):
    with app.app_context():
        token = password_reset.make_token(db.session.get(User, susan))
    rotated = make_app(SECRET_KEY="the-new-secret-key-0123456789abc", SECRET_KEY_FALLBACKS=app.config["SECRET_KEY"])
    with rotated.app_context():
        assert password_reset.user_for_token(token) is not None
