"""Rate limits on sign-in, registration and password-reset requests.

Flask-Limiter counts in the app's Redis (moving windows). Sign-in counts failures
only (a 401), per account and per client address, and once an account is over its
limit even the right password is refused until the window moves on. Over a limit the
answer is 429 with ``Retry-After`` and a page that says when to try again. If Redis
cannot be reached, Flask-Limiter logs the error and lets the request through.

A ``Limiter`` keeps its storage and settings on itself, so each app gets its own,
which wraps that app's views (the blueprint's functions stay undecorated).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import Flask, current_app, request
from flask_babel import gettext, ngettext
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from app.accounts import normalize_username
from app.auth import bp
from app.errors.handlers import error_response, status_title
from app.i18n import N_

_LIMITER_KEY = "microblog.limiter"


def _setting(name: str) -> Callable[[], str]:
    return lambda: current_app.config[name]


def _failed(response) -> bool:
    return response.status_code == 401


def _account_key() -> str:
    """The account a sign-in form names; empty (no limit) when it names none."""
    name = normalize_username(request.form.get("username", "")).strip().lower()
    return f"account:{name}" if name else ""


def _email_key() -> str:
    email = request.form.get("email", "").strip().lower()
    return f"email:{email}" if email else ""


#: endpoint -> (setting naming the limit, key, count only failures, what the 429 says: a
#: msgid, translated when the 429 is sent)
LIMITS: dict[str, list[tuple[str, Callable[[], str], bool, str]]] = {
    "auth.login": [
        ("RATELIMIT_SIGNIN_PER_ACCOUNT", _account_key, True,
         N_("Too many failed sign-ins for this account.")),
        ("RATELIMIT_SIGNIN_PER_ADDRESS", get_remote_address, True,
         N_("Too many failed sign-ins from your address.")),
    ],
    "auth.register": [
        ("RATELIMIT_REGISTER_PER_ADDRESS", get_remote_address, False,
         N_("Too many registrations from your address.")),
    ],
    "auth.reset_password_request": [
        ("RATELIMIT_RESET_PER_ACCOUNT", _email_key, False,
         N_("Too many password-reset requests for this address.")),
        ("RATELIMIT_RESET_PER_ADDRESS", get_remote_address, False,
         N_("Too many password-reset requests from your address.")),
    ],
}


def init_app(app: Flask) -> None:
    """Give ``app`` its limiter and limit its auth views (POST only)."""
    limiter = Limiter(key_func=get_remote_address, app=app)
    app.extensions[_LIMITER_KEY] = limiter
    for endpoint, limits in LIMITS.items():
        view = app.view_functions[endpoint]
        for setting, key, failures_only, message in reversed(limits):
            view = limiter.limit(_setting(setting), key_func=key, methods=["POST"],
                                 deduct_when=_failed if failures_only else None, error_message=message)(view)
        app.view_functions[endpoint] = view


def _try_again_in(seconds: int) -> str:
    """The sentence that says when, whole: a count's words agree with what surrounds them."""
    if seconds < 60:
        return ngettext("Please try again in %(num)d second.", "Please try again in %(num)d seconds.",
                        seconds)
    minutes = round(seconds / 60)
    return ngettext("Please try again in %(num)d minute.", "Please try again in %(num)d minutes.", minutes)


@bp.app_errorhandler(RateLimitExceeded)
def too_many_requests(error: RateLimitExceeded):
    """429 with ``Retry-After``: when the oldest counted request leaves the window."""
    try:
        wait = max(1, math.ceil(current_app.extensions[_LIMITER_KEY].current_limit.reset_at - time.time()))
    except Exception:  # the window's end is unknown (Redis went away since): a safe guess
        wait = 60
    return error_response(429, status_title(429), f"{gettext(error.description)} {_try_again_in(wait)}",
                          [("Retry-After", str(wait))])
