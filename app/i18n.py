"""Languages and time zones: which ones a request gets, and the helpers pages format with.

A request's language is the one chosen on the site (the session, then the account), else
the browser's ``Accept-Language``; its time zone is the account's, else the one the
browser's script puts in the ``tz`` cookie (static/timezone.js). Both fall back to the
config's defaults (English, UTC).

Some English sentences are stored (a task's description and error): they are marked with
:func:`N_` where written and translated where shown, with :func:`translate`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

import pytz
from babel.units import format_unit
from flask import Flask, Response, current_app, g, has_app_context, has_request_context, request, session
from flask_babel import (format_date, format_datetime, format_number, force_locale, get_locale, gettext,
                         ngettext, refresh)
from flask_login import current_user, user_loaded_from_cookie
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header

from app.extensions import babel, db, login

if TYPE_CHECKING:
    from app.models import User

#: Each language the site can be read in, named in itself.
LANGUAGES = {"en": "English", "ru": "Русский", "zh": "中文"}
#: The browser's IANA time zone, set by static/timezone.js.
TIMEZONE_COOKIE = "tz"
#: Where a request's language and the account's time zone are kept.
SESSION_LOCALE = "locale"
SESSION_TIMEZONE = "timezone"
#: The time zone of the user an email outside any request is written for (language_of).
_READER_TIMEZONE = "reader_timezone"


def N_(message: str) -> str:
    """Mark ``message`` for the catalog and return it as it is: for English that is
    stored, and translated where it is shown."""
    return message


def translate(message: str | None) -> str | None:
    """A stored English message (an ``N_`` msgid) in the request's language; text that is
    no msgid comes back unchanged."""
    return gettext(message) if message else message


def languages() -> dict[str, str]:
    """The languages this app offers (``LANGUAGES`` in its config), code to name."""
    return {code: LANGUAGES.get(code, code) for code in current_app.config["LANGUAGES"]}


def current_language() -> str:
    """The language code of this request, one of :func:`languages`."""
    locale = get_locale()
    return locale.language if locale is not None else current_app.config["BABEL_DEFAULT_LOCALE"]


def valid_timezone(name: str | None) -> bool:
    """Whether ``name`` is an IANA time zone pytz (and so Flask-Babel) knows."""
    return bool(name) and name in pytz.all_timezones_set


def browser_timezone() -> str | None:
    """The time zone the browser reported in its cookie, if it is a real one."""
    name = request.cookies.get(TIMEZONE_COOKIE) if has_request_context() else None
    return name if valid_timezone(name) else None


def _signed_in_user() -> User | None:
    """The signed-in user, or None: also outside a request, and in an app whose
    Flask-Login is not set up (yet). Read their ``locale`` and ``timezone`` with getattr:
    a user class of Flask-Login's may have neither."""
    if not has_request_context() or not hasattr(current_app, "login_manager"):
        return None
    return current_user if current_user.is_authenticated else None


def select_locale() -> str | None:
    """The session's choice (the account's, copied there at sign-in), else the browser's
    best match; None (the default) outside a request. ``Accept-Language: zh-TW`` gets
    ``zh``, Simplified Chinese: werkzeug matches on the primary tag when the full one is
    not offered.

    The session, not the account: every task sent carries the locale, so this runs on
    requests that never load their user, and reading the account would load it."""
    if not has_request_context():
        return None
    offered = languages()
    chosen = session.get(SESSION_LOCALE)
    if chosen in offered:
        return chosen
    g.locale_from_browser = True
    return browser_language(request.headers.get("Accept-Language", ""), tuple(offered))


#: Accept-Language values are few (one per browser setup) and parsing one costs more
#: than the rest of the choice: remember the answers for values of an ordinary length.
_REMEMBERED_HEADER_LENGTH = 256


def browser_language(header: str, offered: tuple[str, ...]) -> str | None:
    """The best of ``offered`` for an ``Accept-Language`` value, werkzeug's way."""
    if len(header) > _REMEMBERED_HEADER_LENGTH:
        return parse_accept_header(header, LanguageAccept).best_match(offered)
    return _remembered_browser_language(header, offered)


@lru_cache(maxsize=512)
def _remembered_browser_language(header: str, offered: tuple[str, ...]) -> str | None:
    return parse_accept_header(header, LanguageAccept).best_match(offered)


def select_timezone() -> str | None:
    """The account's time zone (copied into the session at sign-in), else the
    browser's; outside a request, the reader's of the email being written; None (the
    default, UTC) otherwise."""
    if not has_request_context():
        return g.get(_READER_TIMEZONE) if has_app_context() else None
    zone = session.get(SESSION_TIMEZONE)
    return zone if valid_timezone(zone) else browser_timezone()


def remember_account_settings(user: User) -> None:
    """At sign-in (a form, or a remember-me cookie): the account's language, unless this
    session chose one, and its time zone go into the session, where the selectors look."""
    if session.get(SESSION_LOCALE) not in languages() and getattr(user, "locale", None) in languages():
        session[SESSION_LOCALE] = user.locale
    if valid_timezone(getattr(user, "timezone", None)):
        session[SESSION_TIMEZONE] = user.timezone


def choose_locale(code: str) -> None:
    """Read the site in ``code`` from now on: in this session and, when signed in, on
    the account (committed), so it follows the user to other browsers."""
    session[SESSION_LOCALE] = code
    user = _signed_in_user()
    if user is not None and hasattr(user, "locale") and user.locale != code:
        user.locale = code
        db.session.commit()
    refresh()


@contextmanager
def language_of(user: User) -> Iterator[None]:
    """Render an email to ``user`` in the language and time zone in force when it was
    asked for: in the worker's replayed request, the ones carried from the view (the
    visitor's choice before registering, the reset page's language). Sent without its
    request (an outbox re-send whose context was refused), in the user's own.

    Outside a request, leaving the block asks the selectors again (``refresh``, Flask-Babel's
    only public way to drop the zone it cached), so a ``force_locale`` around it ends there."""
    if has_request_context():
        yield
        return
    zone = getattr(user, "timezone", None)
    outer = g.get(_READER_TIMEZONE)
    setattr(g, _READER_TIMEZONE, zone if valid_timezone(zone) else None)
    refresh()
    try:
        if user.locale in languages():
            with force_locale(user.locale):
                yield
        else:
            yield
    finally:
        setattr(g, _READER_TIMEZONE, outer)
        refresh()


def format_filesize(size: int) -> str:
    """A file size in the request's language, in decimal units as Jinja's
    ``filesizeformat`` gives them: ``512 Bytes``, ``1.2 kB``, ``3.4 MB``."""
    if size < 1000:
        return ngettext("%(num)d Byte", "%(num)d Bytes", size)
    locale = get_locale() or babel.default_locale
    for unit in ("kilobyte", "megabyte", "gigabyte"):
        size /= 1000
        if size < 1000:
            break
    return format_unit(size, f"digital-{unit}", length="short", format="#,##0.0", locale=locale)


def _vary_on_accept_language(response: Response) -> Response:
    """A page in the language the browser asked for differs by ``Accept-Language``:
    say so to caches."""
    if g.pop("locale_from_browser", False):
        response.vary.add("Accept-Language")
    return response


def _signed_in_from_cookie(_app: Flask, user: User) -> None:
    remember_account_settings(user)


def init_app(app: Flask) -> None:
    """Bind Flask-Babel to ``app`` with the selectors above, translate Flask-Login's
    message, and give templates the formatting helpers."""
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_timezone)
    user_loaded_from_cookie.connect(_signed_in_from_cookie)
    app.after_request(_vary_on_accept_language)
    login.login_message = N_("Please log in to access this page.")
    login.localize_callback = gettext
    app.jinja_env.filters["translate"] = translate
    app.jinja_env.globals.update(
        languages=languages,
        current_language=current_language,
        format_date=format_date,
        format_datetime=format_datetime,
        format_number=format_number,
        format_filesize=format_filesize,
    )
