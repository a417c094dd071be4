"""Sessions: renewed at sign-in, and ended everywhere by signing out, a password change
or a reset (each gives the user a new session token, part of get_id())."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import sqlalchemy as sa
from http.cookies import SimpleCookie

from app import accounts
from app.extensions import db
from app.models import User
from tests.conftest import AuthActions

PASSWORD = "correct horse"
NEW_PASSWORD = "lantern quiet mango"


def _user(app, username: str = "susan") -> User:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        db.session.expunge(user)
        return user


def _signed_in(auth: AuthActions) -> bool:
    response = auth.get("/")
    return response.status_code == 200


def _remember_cookie(response) -> SimpleCookie:
    (header,) = [value for value in response.headers.getlist("Set-Cookie") if value.startswith("remember_token=")]
    cookie = SimpleCookie()
    cookie.load(header)
    return cookie


def test_sign_in_starts_a_new_session(app, auth):
    auth.register()
    auth.get("/auth/login")
    with auth.client.session_transaction() as session:
        session["planted_before_sign_in"] = "by whoever had this browser"
        csrf_before = session["csrf_token"]
    assert auth.login().status_code == 302
    with auth.client.session_transaction() as session:
        assert "planted_before_sign_in" not in session
        assert session.get("csrf_token") != csrf_before
        assert session["_user_id"] == _user(app).get_id()


def test_the_remember_cookie_is_lax_http_only_and_lasts_the_configured_days(make_app):
    app = make_app(REMEMBER_COOKIE_DAYS="3")
    auth = AuthActions(app.test_client())
    auth.register()
    data = {"username": "susan", "password": PASSWORD, "remember_me": "y", "csrf_token": auth.csrf_token()}
    response = auth.post("/auth/login", data=data)
    morsel = _remember_cookie(response)["remember_token"]
    assert morsel["samesite"] == "Lax" and morsel["httponly"]
    expires = parsedate_to_datetime(morsel["expires"])
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=3))) < timedelta(minutes=5)


def test_the_default_remember_cookie_life_is_two_weeks(app):
    assert app.config["REMEMBER_COOKIE_DURATION"] == timedelta(days=14)


def _two_devices(app) -> tuple[AuthActions, AuthActions, str]:
    """susan signed in on a laptop, and on a phone with remember-me; and the phone's
    remember-me cookie."""
    laptop, phone = AuthActions(app.test_client()), AuthActions(app.test_client())
    laptop.register()
    assert laptop.login().status_code == 302
    data = {"username": "susan", "password": PASSWORD, "remember_me": "y", "csrf_token": phone.csrf_token()}
    response = phone.post("/auth/login", data=data)
    remember = _remember_cookie(response)["remember_token"].value
    assert _signed_in(laptop) and _signed_in(phone)
    return laptop, phone, remember


def _remember_cookie_alone_signs_in(app, remember: str) -> bool:
    """A browser that kept only the remember-me cookie (its session cookie expired)."""
    browser = app.test_client()
    browser.set_cookie("remember_token", remember)
    return browser.get("/").status_code == 200


def test_a_stolen_remember_cookie_works_until_the_user_signs_out(app):
    """The control for the tests below: the cookie alone is a sign-in."""
    _, _, remember = _two_devices(app)
    assert _remember_cookie_alone_signs_in(app, remember)


def test_signing_out_ends_every_session_and_remember_cookie(app):
    laptop, phone, remember = _two_devices(app)
    assert laptop.logout().status_code == 302
    assert not _signed_in(laptop)
    assert not _signed_in(phone)
    assert not _remember_cookie_alone_signs_in(app, remember)


def test_a_password_change_ends_the_other_sessions_and_keeps_this_one(app):
    laptop, phone, remember = _two_devices(app)
    token = laptop.csrf_token("/auth/change_password")
    response = laptop.post("/auth/change_password", data={
        "current_password": PASSWORD, "password": NEW_PASSWORD, "password2": NEW_PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    assert _signed_in(laptop)
    assert not _signed_in(phone)
    assert not _remember_cookie_alone_signs_in(app, remember)
    fresh = AuthActions(app.test_client())
    assert fresh.login(password=PASSWORD).status_code == 401
    assert fresh.login(password=NEW_PASSWORD).status_code == 302


def test_a_password_change_needs_the_current_password_and_a_good_new_one(app, auth):
    auth.signup()
    before = _user(app).password_hash
    for fields, message in [
        ({"current_password": "wrong horse", "password": NEW_PASSWORD}, "That is not your current password."),
        ({"current_password": PASSWORD, "password": "password"}, "Choose a less common password"),
        ({"current_password": PASSWORD, "password": "susan-susan"}, "Do not build your password"),
    ]:
        token = auth.csrf_token("/auth/change_password")
        response = auth.post("/auth/change_password",
                             data={**fields, "password2": fields["password"], "csrf_token": token})
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    assert _user(app).password_hash == before and _signed_in(auth)


def test_a_reset_ends_every_session(app):
    laptop, phone, remember = _two_devices(app)
    with app.app_context():
        accounts.change_password(db.session.get(User, _user(app).id), NEW_PASSWORD)  # what a reset does
    assert not _signed_in(laptop) and not _signed_in(phone)
    assert not _remember_cookie_alone_signs_in(app, remember)


def test_a_session_naming_the_user_without_the_token_is_anonymous(app, auth):
    auth.signup()
    user = _user(app)
    for forged in (str(user.id), f"{user.id}:", f"{user.id}:not-the-token", "x:y"):
        with auth.client.session_transaction() as session:
            session["_user_id"] = forged
        assert not _signed_in(auth), forged
