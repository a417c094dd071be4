"""app/i18n.py: the language and time zone of each request, the switcher, and the catalogs."""
from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from babel.dates import format_date, format_datetime
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from flask import Flask
from pytz import timezone as zone
from wtforms.i18n import messages_path

from app import i18n
from app.auth.passwords import ZXCVBN_WARNINGS
from app.extensions import db
from app.models import Post, User
from app.urls import safe_next
from tests.conftest import AuthActions
from tests.support.services import ROOT

HTML_LANG = re.compile(r'<html lang="([^"]*)">')
TRANSLATIONS = ROOT / "app" / "translations"
#: A post written late in the evening, UTC: already the next morning in Shanghai.
LATE_POST = datetime(2026, 1, 5, 23, 30, tzinfo=timezone.utc)


def page_language(response) -> str:
    match = HTML_LANG.search(response.get_data(as_text=True))
    assert match, "no <html lang> on the page"
    return match.group(1)


def choose(auth: AuthActions, locale: str, page: str = "/auth/login", **data):
    """Press a language's button in the switcher of ``page``."""
    return auth.post("/language", data={"locale": locale, "csrf_token": auth.csrf_token(page), **data})


def user_row(app, username: str = "susan") -> User:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        db.session.expunge(user)
        return user


def set_user_timezone(app, name: str | None, username: str = "susan") -> None:
    with app.app_context():
        db.session.execute(sa.update(User).where(User.username == username).values(timezone=name))
        db.session.commit()


def add_late_post(app, username: str = "susan") -> None:
    with app.app_context():
        author = db.session.scalar(sa.select(User).where(User.username == username))
        db.session.add(Post(body="late", author=author, timestamp=LATE_POST))
        db.session.commit()


def shown_as(moment: datetime, zone_name: str) -> str:
    """How a page in English shows ``moment`` to a reader in ``zone_name``."""
    return format_datetime(moment, "medium", tzinfo=zone(zone_name), locale="en")


# --- the language of a request ----------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_language", "language"),
    [("zh-CN", "zh"), ("zh-Hans", "zh"), ("zh-TW", "zh"), ("ru-RU,ru;q=0.9", "ru"), ("de", "en"),
     ("de,ru;q=0.5", "ru"), ("", "en")],
)
def test_the_language_follows_accept_language(client, accept_language, language):
    response = client.get("/auth/login", headers={"Accept-Language": accept_language})
    assert page_language(response) == language


def test_a_page_in_the_browsers_language_varies_by_accept_language(client):
    response = client.get("/auth/login", headers={"Accept-Language": "ru"})
    assert "Accept-Language" in response.headers["Vary"]


def test_the_switcher_offers_every_language_and_marks_the_current_one(client):
    html = client.get("/auth/login", headers={"Accept-Language": "ru"}).get_data(as_text=True)
    buttons = re.findall(r'<button [^>]*name="locale" value="(\w+)"[^>]*>([^<]*)</button>', html)
    assert buttons == [("en", "English"), ("ru", "Русский"), ("zh", "中文")]
    assert re.search(r'value="ru"[^>]*aria-current="true" disabled', html)
    assert 'name="next" value="/auth/login"' in html


def test_on_an_error_page_the_switcher_leads_home(client):
    html = client.get("/no/such/page").get_data(as_text=True)
    assert 'name="locale"' in html and 'name="next"' not in html


def test_outside_a_request_there_is_no_choice(app):
    with app.app_context():
        assert i18n.select_locale() is None
        assert i18n.select_timezone() is None


def test_an_app_without_flask_login_still_gets_a_language():
    bare = Flask(__name__)
    bare.config["LANGUAGES"] = ["en", "ru", "zh"]
    with bare.test_request_context(headers={"Accept-Language": "ru", "Cookie": "tz=Asia/Shanghai"}):
        assert i18n.select_locale() == "ru"
        assert i18n.select_timezone() == "Asia/Shanghai"


# --- POST /language ---------------------------------------------------------------------


def test_choosing_a_language_applies_to_the_session(auth):
    response = choose(auth, "ru", next="/auth/register")
    assert response.status_code == 302 and response.headers["Location"] == "/auth/register"
    assert page_language(auth.get("/auth/register", headers={"Accept-Language": "zh"})) == "ru"


def test_the_choice_is_confirmed_with_a_message(auth):
    response = choose(auth, "zh")
    assert response.headers["Location"] == "/auth/login"  # a visitor without next
    assert 'role="alert"' in auth.get("/auth/login").get_data(as_text=True)


def test_a_signed_in_users_choice_is_stored_on_the_account(app, auth):
    auth.signup("susan")
    response = choose(auth, "ru", page="/")
    assert response.headers["Location"] == "/"
    assert user_row(app).locale == "ru"


def test_the_accounts_language_applies_in_a_new_session(app, auth):
    auth.signup("susan")
    choose(auth, "zh", page="/")
    elsewhere = AuthActions(app.test_client())
    elsewhere.login("susan")
    assert page_language(elsewhere.get("/", headers={"Accept-Language": "ru"})) == "zh"


def test_a_language_chosen_before_signing_in_survives_it_and_goes_on_the_account(app, auth):
    auth.register("susan")
    choose(auth, "ru")
    assert auth.login("susan").status_code == 302
    assert page_language(auth.get("/")) == "ru"
    assert user_row(app).locale == "ru"


def test_the_next_page_may_come_as_a_query_argument(auth):
    response = auth.post("/language?next=/auth/register",
                         data={"locale": "ru", "csrf_token": auth.csrf_token()})
    assert response.headers["Location"] == "/auth/register"


@pytest.mark.parametrize("next_url", ["//evil.example/", "https://evil.example/", "/\\evil.example",
                                      "/\t/evil.example", "user/susan"])
def test_the_switcher_never_sends_the_browser_off_site(auth, next_url):
    assert choose(auth, "ru", next=next_url).headers["Location"] == "/auth/login"


@pytest.mark.parametrize("next_url", ["/", "/user/susan?page=2"])
def test_safe_next_keeps_same_site_paths(next_url):
    assert safe_next(next_url, "/fallback") == next_url


@pytest.mark.parametrize("locale", ["de", "", "ru-RU", "<script>"])
def test_an_unknown_language_is_400_with_the_reason(auth, locale):
    response = choose(auth, locale)
    assert response.status_code == 400
    assert "Choose one of these languages: en, ru, zh." in response.get_data(as_text=True)
    assert page_language(auth.get("/auth/login")) == "en"


def test_an_unknown_language_is_400_json_for_json_clients(auth):
    response = auth.post("/language", data={"locale": "de", "csrf_token": auth.csrf_token()},
                         headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.get_json() == {"error": "Bad Request",
                                   "message": "Choose one of these languages: en, ru, zh."}


def test_a_choice_without_the_csrf_token_is_400(auth):
    auth.get("/auth/login")
    response = auth.post("/language", data={"locale": "ru"})
    assert response.status_code == 400
    assert "CSRF token is missing" in response.get_data(as_text=True)
    assert page_language(auth.get("/auth/login")) == "en"


def test_get_language_is_405(client):
    assert client.get("/language").status_code == 405


# --- registration -------------------------------------------------------------------------


def test_registration_stores_the_language_and_time_zone_in_force(app, auth):
    auth.client.set_cookie("tz", "Asia/Shanghai")
    assert auth.register("susan", headers={"Accept-Language": "ru-RU,ru;q=0.9"}).status_code == 302
    user = user_row(app)
    assert (user.locale, user.timezone) == ("ru", "Asia/Shanghai")


def test_registration_stores_english_and_no_time_zone_by_default(app, auth):
    auth.client.set_cookie("tz", "Mars/Olympus_Mons")
    assert auth.register("susan").status_code == 302
    user = user_row(app)
    assert (user.locale, user.timezone) == ("en", None)


# --- time zones -------------------------------------------------------------------------


def test_dates_are_shown_in_the_time_zone_of_the_cookie(app, auth):
    auth.signup("susan")
    add_late_post(app)
    auth.client.set_cookie("tz", "Asia/Shanghai")
    html = auth.get("/user/susan").get_data(as_text=True)
    assert shown_as(LATE_POST, "Asia/Shanghai") in html and "Jan 6, 2026" in html
    assert shown_as(LATE_POST, "UTC") not in html
    assert '<time datetime="2026-01-05T23:30:00+00:00">' in html  # the machine-readable moment stays UTC


def signed_in_with_timezone(app, auth, name: str | None) -> None:
    """Register susan, give her account ``name`` as its zone, then sign in: the session
    takes the account's zone at sign-in."""
    auth.register("susan")
    set_user_timezone(app, name)
    assert auth.login("susan").status_code == 302


def test_the_accounts_time_zone_comes_before_the_cookie(app, auth):
    signed_in_with_timezone(app, auth, "Asia/Shanghai")
    add_late_post(app)
    auth.client.set_cookie("tz", "America/New_York")
    html = auth.get("/user/susan").get_data(as_text=True)
    assert shown_as(LATE_POST, "Asia/Shanghai") in html


@pytest.mark.parametrize("cookie", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
def test_an_invalid_time_zone_cookie_is_ignored(app, auth, cookie):
    auth.signup("susan")
    add_late_post(app)
    auth.client.set_cookie("tz", cookie)
    html = auth.get("/user/susan").get_data(as_text=True)
    assert shown_as(LATE_POST, "UTC") in html


def test_an_invalid_time_zone_on_the_account_falls_back_to_the_cookie(app, auth):
    signed_in_with_timezone(app, auth, "Not/A_Zone")
    add_late_post(app)
    auth.client.set_cookie("tz", "Asia/Shanghai")
    assert shown_as(LATE_POST, "Asia/Shanghai") in auth.get("/user/susan").get_data(as_text=True)


def test_a_remember_me_sign_in_takes_the_accounts_zone_and_language(app, auth):
    auth.register("susan")
    with app.app_context():
        db.session.execute(sa.update(User).values(timezone="Asia/Shanghai", locale="ru"))
        db.session.commit()
    login = {"username": "susan", "password": "correct horse", "remember_me": "y", "csrf_token": auth.csrf_token()}
    assert auth.post("/auth/login", data=login).status_code == 302
    auth.client.delete_cookie("session")  # the browser restarted: only the remember-me cookie is left
    add_late_post(app)
    page = auth.get("/user/susan")
    assert page_language(page) == "ru"
    assert format_datetime(LATE_POST, "medium", tzinfo=zone("Asia/Shanghai"), locale="ru") in page.get_data(
        as_text=True)


def test_the_profile_date_is_in_the_users_zone_and_language(app, auth):
    signed_in_with_timezone(app, auth, "Asia/Shanghai")
    created = user_row(app).created
    choose(auth, "ru", page="/")
    html = auth.get("/user/susan").get_data(as_text=True)
    assert format_date(created.astimezone(zone("Asia/Shanghai")), "medium", locale="ru") in html


# --- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "english", "russian"),
    [(1, "1 Byte", None), (512, "512 Bytes", None), (1234, "1.2 kB", "1,2 кБ"),
     (5_300_000, "5.3 MB", "5,3 МБ"), (2_000_000_000, "2.0 GB", "2,0 ГБ")],
)
def test_file_sizes_are_written_as_the_language_writes_them(app, size, english, russian):
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert i18n.format_filesize(size) == english
    if russian is not None:  # the unit and the decimal comma are CLDR's, not our catalog's
        with app.test_request_context(headers={"Accept-Language": "ru"}):
            assert i18n.format_filesize(size).replace("\xa0", " ") == russian


def test_wtforms_own_messages_come_in_the_users_language(auth):
    required = Translations.load(messages_path(), ["ru"], "wtforms").gettext("This field is required.")
    assert required != "This field is required.", "WTForms ships no Russian catalog any more"
    choose(auth, "ru")
    response = auth.post("/auth/register", data={"csrf_token": auth.csrf_token("/auth/register")})
    assert response.status_code == 400
    assert required in response.get_data(as_text=True)


# --- the catalogs ------------------------------------------------------------------------


def _zxcvbn_warnings() -> set[str]:
    """Every sentence zxcvbn's feedback.py can give as a warning."""
    from zxcvbn import feedback

    def sentence(node) -> str | None:
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_" and node.args:
            return ast.literal_eval(node.args[0])
        return None

    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(feedback))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "warning" for t in node.targets):
            found.add(sentence(node.value))
        elif isinstance(node, ast.Dict):
            found.update(sentence(value) for key, value in zip(node.keys, node.values)
                         if isinstance(key, ast.Constant) and key.value == "warning")
    return found - {None}


def test_every_zxcvbn_warning_has_a_msgid():
    warnings = _zxcvbn_warnings()
    assert len(warnings) >= 10
    assert warnings <= ZXCVBN_WARNINGS


def _msgid(message) -> str | tuple[str, ...]:
    """A message's id, singular or (singular, plural), however the catalog was read."""
    return message.id if isinstance(message.id, str) else tuple(message.id)


def _msgids(catalog) -> set[str | tuple[str, ...]]:
    return {_msgid(message) for message in catalog if message.id}


def test_the_template_holds_every_marked_string(tmp_path):
    extracted = tmp_path / "messages.pot"
    subprocess.run(
        [str(Path(sys.executable).parent / "pybabel"), "--quiet", "extract", "-F", "babel.cfg", "-k", "_l",
         "-k", "N_", "-o", str(extracted), "."],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )
    with open(extracted, "rb") as fresh, open(TRANSLATIONS / "messages.pot", "rb") as committed:
        assert _msgids(read_po(fresh)) == _msgids(read_po(committed)), "run `make translations`"


def test_email_text_templates_are_extracted():
    with open(TRANSLATIONS / "messages.pot", "rb") as pot:
        locations = {path for message in read_po(pot) for path, _ in message.locations}
    assert {"app/templates/email/welcome.txt", "app/templates/email/export_posts.txt",
            "app/templates/email/reset_password.txt"} <= locations


@pytest.mark.parametrize("language", ["ru", "zh"])
def test_each_language_has_every_msgid_and_compiles_its_translations(language):
    folder = TRANSLATIONS / language / "LC_MESSAGES"
    with open(TRANSLATIONS / "messages.pot", "rb") as pot, open(folder / "messages.po", "rb") as po:
        template, catalog = read_po(pot), read_po(po)
    assert _msgids(catalog) == _msgids(template), "run `make translations`"
    translated = {_msgid(message) for message in catalog
                  if message.id and not message.fuzzy and any(_strings(message.string))}
    # Exactly those: an untranslated plural compiled with its English forms would stop
    # gettext from falling back to English ("5 minute" in Chinese).
    with open(folder / "messages.mo", "rb") as mo:
        assert _msgids(read_mo(mo)) == translated, "run `make translations`"


def _strings(string: str | tuple[str, ...]) -> tuple[str, ...]:
    return (string,) if isinstance(string, str) else tuple(string)


_PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")
_TAG = re.compile(r"</?\w+")


@pytest.mark.parametrize("language", ["ru", "zh"])
def test_every_message_is_translated_keeping_its_placeholders_and_markup(language):
    """Whole translations (every plural form), each with the msgid's placeholders (a plural
    form may leave the count to its words) and the same tags; the .mo says the same."""
    folder = TRANSLATIONS / language / "LC_MESSAGES"
    with open(folder / "messages.po", "rb") as po, open(folder / "messages.mo", "rb") as mo:
        catalog, compiled = read_po(po), read_mo(mo)
    problems = []
    for message in catalog:
        if not message.id:
            continue
        ids, strings = _strings(message.id), _strings(message.string)
        if message.fuzzy or not all(strings) or len(strings) != (catalog.num_plurals if len(ids) > 1 else 1):
            problems.append(f"untranslated: {ids[0]!r}")
            continue
        wanted = set(_PLACEHOLDER.findall(" ".join(ids)))
        for string in strings:
            found = set(_PLACEHOLDER.findall(string))
            if wanted - found - {"%(num)d", "%(num)s"} or found - wanted:
                problems.append(f"placeholders of {ids[0]!r}: {string!r}")
            if sorted(_TAG.findall(ids[0])) != sorted(_TAG.findall(string)):
                problems.append(f"markup of {ids[0]!r}: {string!r}")
        if _strings(compiled.get(message.id).string) != strings:
            problems.append(f"not compiled: {ids[0]!r}")
    assert problems == []


# --- what a reader of each language sees ------------------------------------------------------


def in_language(app, language: str, message: str, **variables) -> str:
    """``message`` as the catalogs translate it; it must differ from the English."""
    from flask_babel import force_locale, gettext

    with app.test_request_context(), force_locale(language):
        text = gettext(message, **variables)
    assert text != (message % variables if variables else message), f"{message!r} has no {language}"
    return text


def test_the_choice_is_confirmed_in_the_new_language(app, auth):
    choose(auth, "ru")
    assert in_language(app, "ru", "Language changed.") in auth.get("/auth/login").get_data(as_text=True)


@pytest.mark.parametrize("language", ["ru", "zh"])
def test_an_error_page_and_its_json_speak_the_readers_language(app, client, language):
    headers = {"Accept-Language": language}
    page = client.get("/no/such/page", headers=headers)
    assert page.status_code == 404 and in_language(app, language, "Not Found") in page.get_data(as_text=True)
    as_json = client.get("/no/such/page", headers={**headers, "Accept": "application/json"}).get_json()
    assert as_json["error"] == in_language(app, language, "Not Found")


def test_our_own_form_messages_are_translated(app, auth):
    choose(auth, "ru", page="/auth/register")
    page = auth.register("susan", password="short").get_data(as_text=True)
    from flask_babel import force_locale, ngettext

    with app.test_request_context(), force_locale("ru"):
        expected = ngettext("Use at least %(num)d character.", "Use at least %(num)d characters.", 8)
    assert expected != "Use at least 8 characters." and expected in page


def test_a_task_and_its_alert_speak_the_readers_language(app, auth):
    from app.models import Task

    auth.signup("susan")
    choose(auth, "zh", page="/")
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "susan"))
        db.session.add(Task(id="t-zh", name="export_posts", description=i18n.N_("Exporting posts..."),
                            user_id=user.id, error=None))
        db.session.commit()
    status = auth.get("/tasks/t-zh").get_json()
    assert status["description"] == in_language(app, "zh", "Exporting posts...")
    page = auth.get("/").get_data(as_text=True)
    assert f'data-text-gone="{in_language(app, "zh", "This task is no longer available.")}"' in page
