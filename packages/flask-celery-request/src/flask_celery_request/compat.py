"""Where Flask 3.1 and 3.2, Flask-Login 0.6 and 0.7, Flask-Babel and Celery's internals differ.

Every use of a private name of those libraries is in this module, so that a new
release breaks one small file, and its tests (``tests/test_compat.py``) say which.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from flask import Flask, Response, g, has_app_context, request, session
from flask.globals import app_ctx
from flask.sessions import NullSession, SecureCookieSession

#: Flask 3.2 merged RequestContext into AppContext, and its dispatch methods take the
#: context as their first argument.
PROCESS_RESPONSE_TAKES_CONTEXT = len(inspect.signature(Flask.process_response).parameters) == 3
#: Flask 3.1 reuses an app context already pushed when a request context is pushed;
#: 3.2 always pushes a fresh one.
REQUEST_REUSES_APP_CONTEXT = not PROCESS_RESPONSE_TAKES_CONTEXT


class UnsavedSession(NullSession):
    """The session of a replayed request: empty (no cookie is carried) and writable,
    but a null session to Flask, so it is neither opened nor saved: the response of a
    replayed request reaches no browser."""

    __setitem__ = SecureCookieSession.__setitem__
    __delitem__ = SecureCookieSession.__delitem__
    clear = SecureCookieSession.clear
    pop = SecureCookieSession.pop
    popitem = SecureCookieSession.popitem
    update = SecureCookieSession.update
    setdefault = SecureCookieSession.setdefault


def _give_session(ctx: Any, session: SecureCookieSession) -> None:
    # What ``session=`` of the context's constructor sets, which ``app.request_context()``
    # does not take: ``_session`` since Flask 3.1.3 (``session`` became a property),
    # ``session`` in Flask 3.1.0 to 3.1.2.
    if "_session" in vars(ctx):
        ctx._session = session
    else:
        ctx.session = session


@contextmanager
def request_context(app: Flask, environ: dict[str, Any], form: Any = None) -> Iterator[Any]:
    """``app.request_context(environ)``, pushed, with its own ``g`` on every Flask and
    an :class:`UnsavedSession`.

    ``form``, when given, is the already parsed form (set through werkzeug's
    ``cached_property``, whose setter is public), so the worker does not parse it again.
    """
    ctx = app.request_context(environ)
    _give_session(ctx, UnsavedSession())
    if form is not None:
        ctx.request.form = form
        ctx.request.files = type(form)()
        ctx.request.stream = BytesIO()
    if REQUEST_REUSES_APP_CONTEXT and has_app_context():
        # Flask 3.1 would share the outer app context's g with the replayed request.
        with app.app_context(), ctx:
            yield ctx
    else:
        with ctx:
            yield ctx


def live_request() -> tuple[Flask, Any, Any]:
    """The app, request and ``g`` of the active request, through one context lookup
    (each proxy access costs a lookup, and the send path is paid on every request)."""
    ctx = app_ctx._get_current_object()
    live = ctx.request if PROCESS_RESPONSE_TAKES_CONTEXT else request._get_current_object()
    return ctx.app, live, ctx.g


def form_is_parsed(request: Any) -> bool:
    """Whether the view already read ``request.form`` (werkzeug caches it in the
    instance ``__dict__``, as its ``cached_property`` documents); its body is gone then."""
    return "form" in vars(request)


def process_response(app: Flask, ctx: Any, response: Response) -> Response:
    """The app's after_request hooks (and session saving) for the pushed ``ctx``."""
    if PROCESS_RESPONSE_TAKES_CONTEXT:
        return app.process_response(ctx, response)
    return app.process_response(response)


# --- Flask-Login ---------------------------------------------------------------------------

#: Flask-Login keeps the loaded user in ``g`` under this name (0.6 and 0.7).
_LOADED_USER = "_login_user"


def sender_user_id(app: Flask, live: Any, g: Any) -> str | None:
    """The id of the user signed in to the live request ``live`` (``g`` its globals), or None.

    Cheap when it can be: the user the view already loaded, else the id in the session
    (what Flask-Login would load); Flask-Login loads it only when neither says (a
    remember-me cookie, a request loader, strong session protection).
    """
    manager = getattr(app, "login_manager", None)
    if manager is None:
        return None
    user = g.get(_LOADED_USER)
    if user is None:
        mode = app.config.get("SESSION_PROTECTION", manager.session_protection)
        user_id = session.get("_user_id") if mode != "strong" else None
        if user_id is not None:
            return str(user_id)
        cookie_name = app.config.get("REMEMBER_COOKIE_NAME", "remember_token")
        if mode != "strong" and cookie_name not in live.cookies and manager.request_callback is None:
            return None
        from flask_login import current_user

        user = current_user._get_current_object()
    return str(user.get_id()) if user.is_authenticated else None


def restore_user(app: Flask, user_id: str) -> None:
    """Make the user ``user_id`` the current user of the pushed, replayed request.

    Lazily: the id goes into the replayed (never saved) session, where Flask-Login
    looks first, so the app's ``user_loader`` runs only if the task reads
    ``current_user``, not for every task. The session identifier is the replayed
    request's own, so session protection sees nothing amiss. A user that no longer
    exists is anonymous (unless the app's request loader says otherwise).
    """
    manager = getattr(app, "login_manager", None)
    if manager is None:
        return
    session["_user_id"] = user_id
    session["_fresh"] = False
    session["_id"] = manager._session_identifier_generator()


# --- Flask-Babel ---------------------------------------------------------------------------


def force_babel_timezone(name: str) -> None:
    """Make ``name`` the time zone of the pushed context, as ``force_locale`` does for
    the locale (Flask-Babel 4 has no ``force_timezone``): ``get_timezone()`` caches its
    choice as ``babel_tzinfo`` on the namespace it keeps in ``g``. A later
    ``flask_babel.refresh()`` asks the app's selector again."""
    from flask_babel import get_timezone
    from pytz import timezone  # what Flask-Babel 4's selector results become

    get_timezone()  # creates the namespace, whichever Flask-Babel 4.x names it
    namespace = g.get("_flask_babel")
    if namespace is None:
        raise RuntimeError("Flask-Babel keeps no _flask_babel namespace in g: this Flask-Babel "
                           "is not supported; carry no time zone")
    namespace.babel_tzinfo = timezone(name)


# --- Celery --------------------------------------------------------------------------------


def forget_connections(celery_app: Any) -> None:
    """Drop the connection pools and result backend bound to the previous broker, as
    Celery does after a fork, so a rebound app does not keep using the old one."""
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    celery_app._backend_cache = None
    celery_app._local.__dict__.pop("backend", None)
