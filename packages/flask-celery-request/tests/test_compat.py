"""compat.py: each private name or version difference it relies on, checked on the installed
Flask, Flask-Login and Celery, so that a new release fails here and says which.

The tests that differ by version say so in their names and assert what holds on each.
"""
from __future__ import annotations

import importlib.metadata
import re
from io import BytesIO

import celery as celery_package
import pytest
from celery.app.defaults import DEFAULTS
from flask import Response, g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, UserMixin, current_user, login_user
from werkzeug.datastructures import ImmutableMultiDict

from conftest import make_app
from flask_celery_request import CeleryWithContext, compat


def version(distribution: str) -> tuple[int, int]:
    """(major, minor) of an installed distribution, pre-releases included (3.2.0.dev0)."""
    major, minor = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(distribution)).groups()
    return int(major), int(minor)


FLASK = version("flask")
CELERY = tuple(celery_package.VERSION[:2])


def test_flask_3_2_process_response_takes_the_context() -> None:
    """Flask 3.2: ``process_response(ctx, response)``; 3.1: ``process_response(response)``."""
    assert compat.PROCESS_RESPONSE_TAKES_CONTEXT is (FLASK >= (3, 2))


def test_flask_3_1_request_reuses_a_pushed_app_context() -> None:
    """The constant is what the installed Flask does: 3.1 shares g, 3.2 does not."""
    app = make_app()
    with app.app_context():
        g.outer = True
        with app.test_request_context("/"):
            shared = "outer" in g
    assert shared is compat.REQUEST_REUSES_APP_CONTEXT is (FLASK < (3, 2))


def test_process_response_runs_after_request_hooks() -> None:
    app = make_app()
    app.after_request(lambda response: response.headers.set("X-Hooked", "1") or response)
    with app.test_request_context("/") as ctx:
        response = compat.process_response(app, ctx, app.response_class())
    assert response.headers["X-Hooked"] == "1"


def test_request_context_pushes_its_own_g_inside_an_app_context() -> None:
    app = make_app()
    with app.app_context():
        g.outer = True
        with compat.request_context(app, {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "SERVER_NAME": "h",
                                          "SERVER_PORT": "80", "wsgi.url_scheme": "http"}):
            assert has_request_context() and request.path == "/x"
            assert "outer" not in g
        assert g.outer is True


def test_request_context_sets_the_parsed_form() -> None:
    """werkzeug's cached_property setter: the worker does not parse a body it does not have."""
    app = make_app()
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/x-www-form-urlencoded",
               "CONTENT_LENGTH": "999", "SERVER_NAME": "h", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "wsgi.input": BytesIO(b"")}
    with compat.request_context(app, environ, ImmutableMultiDict([("a", "1"), ("a", "2")])):
        assert request.form.getlist("a") == ["1", "2"]
        assert not request.files
        assert request.get_data() == b""


def test_unsaved_session_is_null_to_flask_and_writable() -> None:
    unsaved = compat.UnsavedSession()
    assert SecureCookieSessionInterface().is_null_session(unsaved)
    unsaved["a"] = 1
    unsaved.update(b=2)
    assert unsaved.setdefault("c", 3) == 3 and unsaved.pop("a") == 1
    del unsaved["b"]
    unsaved.clear()
    assert dict(unsaved) == {}


def test_replayed_session_is_the_unsaved_session() -> None:
    app = make_app()
    environ = {"REQUEST_METHOD": "GET", "SERVER_NAME": "h", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "HTTP_COOKIE": "session=anything"}
    with compat.request_context(app, environ) as ctx:
        assert isinstance(session._get_current_object(), compat.UnsavedSession)
        session["x"] = 1
        response = compat.process_response(app, ctx, Response())
    assert "Set-Cookie" not in response.headers


# --- Flask-Login ---------------------------------------------------------------------------


class User(UserMixin):
    id = "5"


def test_flask_login_keeps_the_loaded_user_in_g_under_the_name_compat_reads() -> None:
    app = make_app()
    LoginManager(app).user_loader(lambda user_id: None)
    user = User()
    with app.test_request_context("/"):
        assert compat._LOADED_USER not in g
        login_user(user)
        assert g.get(compat._LOADED_USER) is user
        assert compat.sender_user_id(*compat.live_request()) == "5"


def test_flask_login_loads_the_restored_user_only_when_asked() -> None:
    """restore_user leaves the id where Flask-Login looks first: the loader runs when
    current_user is read, not before, and session protection stays quiet."""
    from flask_login.signals import session_protected

    app = make_app()
    app.config["SESSION_PROTECTION"] = "strong"
    user = User()
    calls: list[str] = []
    LoginManager(app).user_loader(lambda user_id: calls.append(user_id) or (user if user_id == "5" else None))
    protected: list[object] = []
    session_protected.connect(protected.append, app)
    with app.test_request_context("/", headers={"User-Agent": "probe"}, environ_base={"REMOTE_ADDR": "10.0.0.9"}):
        compat.restore_user(app, "5")
        assert calls == []
        assert current_user._get_current_object() is user
        assert calls == ["5"]
    with app.test_request_context("/"):
        compat.restore_user(app, "6")
        assert current_user.is_anonymous
    assert protected == []


def test_flask_login_session_key_is_what_compat_reads() -> None:
    app = make_app()
    LoginManager(app).user_loader(lambda user_id: None)
    with app.test_request_context("/"):
        login_user(User())
        assert session["_user_id"] == "5"


def test_no_login_manager_no_user() -> None:
    app = make_app()
    with app.test_request_context("/"):
        assert compat.sender_user_id(*compat.live_request()) is None
        compat.restore_user(app, "1")  # nothing to restore into, and no error


# --- Celery --------------------------------------------------------------------------------


def test_celery_5_7_has_task_retry_on_worker_lost() -> None:
    """Celery 5.7 added the setting (and signature_from_request carries it); 5.5 has neither."""
    from celery import Task

    assert ("task_retry_on_worker_lost" in DEFAULTS) is (CELERY >= (5, 7))
    assert hasattr(Task, "retry_on_worker_lost") is (CELERY >= (5, 7))


def test_celery_version_is_supported() -> None:
    assert (5, 5) <= CELERY < (6, 0)


def test_rebinding_to_another_broker_forgets_the_old_connections() -> None:
    first = make_app(CELERY={"broker_url": "memory://", "result_backend": "cache+memory://"})
    celery = CeleryWithContext(first)
    with celery.pool.acquire() as connection:
        assert connection.as_uri().startswith("memory://")
    assert type(celery.backend).__name__ == "CacheBackend"
    second = make_app(CELERY={"broker_url": "redis://other-host:6390/3",
                              "result_backend": "redis://other-host:6390/4"})
    celery.init_app(second)
    with celery.pool.acquire() as connection:  # lazy: nothing connects
        assert (connection.transport_cls, connection.hostname, connection.port) == ("redis", "other-host", 6390)
    assert type(celery.backend).__name__ == "RedisBackend"


def test_rebinding_to_the_same_broker_keeps_the_pool() -> None:
    settings = {"broker_url": "memory://", "result_backend": "cache+memory://"}
    celery = CeleryWithContext(make_app(CELERY=settings))
    pool = celery.pool
    celery.init_app(make_app(CELERY=settings))
    assert celery.pool is pool


@pytest.mark.parametrize("name", ["_pool", "_backend_cache", "_local"])
def test_celery_app_attributes_compat_resets_exist(name: str) -> None:
    celery = CeleryWithContext(make_app())
    celery.pool, celery.backend  # noqa: B018 - create them
    assert hasattr(celery, name)
    assert hasattr(celery.amqp, "_producer_pool")


# --- Flask-Babel ------------------------------------------------------------------------------


def test_force_babel_timezone_is_what_get_timezone_answers() -> None:
    """Flask-Babel has no force_timezone: compat sets the zone get_timezone() caches."""
    from flask_babel import Babel, get_timezone

    app = make_app()
    Babel(app, timezone_selector=lambda: "Europe/Lisbon")
    with app.test_request_context("/"):
        assert get_timezone().zone == "Europe/Lisbon"
        compat.force_babel_timezone("Asia/Tokyo")
        assert get_timezone().zone == "Asia/Tokyo"
