"""Emails in the language in force when they were asked for, through a real worker and
SMTP server: the language travels with the request (Flask-Celery-Request's carried
locale), since the session that holds a visitor's choice never reaches the worker."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytz
import sqlalchemy as sa
from flask_babel import force_locale, format_date, gettext, ngettext

from app.extensions import db
from app.i18n import language_of
from app.models import User, utcnow
from tests.conftest import AuthActions, csrf_token_in

SITE = "https://languages.example.org/"


def translated(app, language: str, message: str, **variables) -> str:
    """``message`` in ``language``, from the app's catalogs; it must differ from English."""
    with app.test_request_context(), force_locale(language):
        text = gettext(message, **variables)
    assert text != message % variables if variables else text != message, f"{message!r} has no {language}"
    return text


def body(message, kind: str) -> str:
    return message.message.get_body((kind,)).get_content()


def choose_language(auth: AuthActions, code: str, page: str = "/auth/login"):
    token = csrf_token_in(auth.get(page).get_data(as_text=True))
    return auth.post("/language", data={"locale": code, "next": page, "csrf_token": token})


def test_a_visitor_who_picks_russian_is_welcomed_in_russian(live_app, mail_sink):
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    chosen = choose_language(auth, "ru", "/auth/register")
    assert chosen.status_code == 302 and chosen.headers["Location"] == "/auth/register"
    page = auth.get("/auth/register").get_data(as_text=True)
    assert '<html lang="ru">' in page and translated(live_app, "ru", "Register") in page

    assert auth.register("vera").status_code == 302
    subject = translated(live_app, "ru", "[Microblog] Welcome to Microblog!")
    (message,) = mail_sink.wait_for(1, subject=subject)
    welcome = translated(live_app, "ru", "Welcome to Microblog! Your account is ready.")
    assert welcome in body(message, "plain") and welcome in body(message, "html")
    assert translated(live_app, "ru", "Dear %(username)s,", username="vera") in body(message, "plain")
    with live_app.app_context():
        assert db.session.scalar(sa.select(User.locale).where(User.username == "vera")) == "ru"


def test_a_browser_asking_for_chinese_is_answered_and_reset_in_chinese(live_app, mail_sink):
    """No choice made: Accept-Language decides the pages, and the reset email it asks for."""
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    assert auth.register("zhou").status_code == 302
    chinese = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
    page = auth.get("/auth/reset_password_request", headers=chinese).get_data(as_text=True)
    assert '<html lang="zh">' in page and translated(live_app, "zh", "Reset your password") in page

    token = csrf_token_in(page)
    response = auth.post("/auth/reset_password_request", data={"email": "zhou@example.com", "csrf_token": token},
                         headers=chinese)
    assert response.status_code == 302
    (message,) = mail_sink.wait_for(1, subject=translated(live_app, "zh", "[Microblog] Reset your password"))
    assert translated(live_app, "zh", "Dear %(username)s,", username="zhou") in body(message, "plain")


def test_an_export_started_in_russian_is_mailed_in_russian(live_app, mail_sink):
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    auth.signup("rustam")
    assert choose_language(auth, "ru", "/user/rustam").status_code == 302
    for number in range(3):
        assert auth.post_form("/index", {"post": f"запись {number}"}).status_code == 302
    mail_sink.messages.clear()  # the welcome email (English: rustam registered before choosing)

    response = auth.post_form("/export_posts", page="/user/rustam")
    assert response.status_code == 302
    flashed = auth.get("/user/rustam").get_data(as_text=True)
    assert translated(live_app, "ru", "Your export has started. You can keep browsing; we will email you when "
                                      "it is ready.") in flashed
    (message,) = mail_sink.wait_for(1, subject=translated(live_app, "ru", "[Microblog] Your posts are ready"))
    with live_app.test_request_context(), force_locale("ru"):
        ready = ngettext("Your export of %(num)s post is ready.", "Your export of %(num)s posts is ready.", 3)
    assert ready != "Your export of 3 posts is ready." and ready in body(message, "plain")


def test_exports_started_a_day_apart_in_time_zones_are_each_mailed_with_their_own_day(live_app, mail_sink):
    """Through the worker, the zone of the click writes the email's date: UTC+14 and
    UTC-11 are 25 hours apart, so their days always differ; a zone lost on the way would
    give both the same (UTC's) day."""
    zones = {"kiri": "Pacific/Kiritimati", "pago": "Pacific/Pago_Pago"}
    started = utcnow()
    for username, zone in zones.items():
        auth = AuthActions(live_app.test_client(), base_url=SITE)
        auth.client.set_cookie("tz", zone, domain="languages.example.org")
        auth.signup(username)
        assert auth.post_form("/export_posts", page=f"/user/{username}").status_code == 302
    messages = mail_sink.wait_for(2, subject="[Microblog] Your posts are ready")
    sent = utcnow()

    promised = {}
    for username, zone in zones.items():
        (message,) = [m for m in messages if m.recipients == [f"{username}@example.com"]]
        text = body(message, "plain")
        days = {(moment + timedelta(days=live_app.config["EXPORT_RETENTION_DAYS"])).astimezone(pytz.timezone(zone))
                .date() - timedelta(days=1) for moment in (started, sent)}
        with live_app.test_request_context():
            worded = {day: format_date(day, "long") for day in days}
        (promised[username],) = [day for day, words in worded.items() if f"until the end of {words}," in text]
    assert promised["kiri"] != promised["pago"]


def test_an_email_sent_without_its_request_is_in_the_accounts_language(live_app):
    """An outbox re-send whose context was refused runs outside any request: the
    account's language, not the default, writes it."""
    with live_app.app_context():
        user = User(username="olga", email="olga@example.com", locale="ru")
        with language_of(user):
            outside = gettext("Welcome to Microblog! Your account is ready.")
    assert outside == translated(live_app, "ru", "Welcome to Microblog! Your account is ready.")


def test_an_email_sent_without_its_request_is_dated_in_the_accounts_time_zone(live_app):
    """Its dates fall on the account's day, and the zone is the default's again after."""
    late = datetime(2026, 1, 5, 23, 30, tzinfo=timezone.utc)  # already the 6th in Shanghai
    with live_app.app_context():
        user = User(username="olga", email="olga@example.com", locale="ru", timezone="Asia/Shanghai")
        with language_of(user):
            inside = format_date(late, "long")
        after = format_date(late, "long")
    assert re.fullmatch("6 января 2026[ \u00a0\u202f]г\\.", inside), inside  # CLDR's space varies
    assert after == "January 5, 2026"
