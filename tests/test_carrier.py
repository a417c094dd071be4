"""The microblog's request carrier (Flask-Celery-Request) in one process.

What the microblog's own configuration makes of the carrier: eager runs inside and
outside a request, ``SERVER_NAME`` links, the ``CELERY_CONTEXT_*`` settings read from the
environment by config.py, what the app's defaults leave out of a captured request, key
rotation through ``SECRET_KEY_FALLBACKS``, the size limits, trusted hosts and one capture
per request. The extension's own internals are tested in packages/flask-celery-request/tests;
the real worker in tests/test_carrier_worker.py.
"""
from __future__ import annotations

import logging

import pytest
from flask import Blueprint, after_this_request, g, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_celery_request import CONTEXT_HEADER, ContextRefused
from flask_celery_request.capture import capture_request
from flask_celery_request.settings import ContextSettings
from flask_celery_request.task import seal_current_request
from flask_login import UserMixin, login_user

from app import create_app
from app.extensions import celery, csrf
from config import TestingConfig


@celery.task(bind=True)
def which_request(self):
    """The identity of the request the task runs in, and what it sees."""
    return {"request_id": id(request._get_current_object()), "path": request.path,
            "marker": g.get("marker"), "headers": dict(self.request.headers or {})}


@celery.task
def external_index_url():
    return url_for("main.index", _external=True)


@celery.task
def replayed_json():
    return request.get_json()


@celery.task
def registers_a_hook_for_this_request(calls):
    @after_this_request
    def this_request_only(response):
        calls.append("this request")
        return response

    return {"view_args": request.view_args, "blueprint": request.blueprint}


@celery.task(bind=True, max_retries=1)
def eager_retry(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0, headers={"extra": "1"})
    return request.host


def make_app(app_environ, **overrides):
    config = TestingConfig(app_environ)
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config)


def sealer(app):
    """The app's sealer, as ``CeleryWithContext.init_app`` built it from the app's config."""
    return app.extensions["flask_celery_request"].sealer


def carried(app, path="/", **request_options) -> dict:
    """What a task sent from this request would carry: sealed as the app seals, then opened."""
    with app.test_request_context(path, **request_options):
        token = seal_current_request()
    assert token is not None and token.startswith("fcr1.")
    return sealer(app).open(token)


# --- eager runs and the app context ------------------------------------------------------


def test_apply_inside_a_live_request_runs_in_that_request(app):
    with app.test_request_context("/live/path"):
        g.marker = "from the view"
        outcome = which_request.apply().get()
        assert outcome["request_id"] == id(request._get_current_object())
        assert outcome["marker"] == "from the view"  # no second context: same g
        assert outcome["path"] == "/live/path"


def test_eager_mode_inside_a_request_needs_no_broker(app):
    celery.conf.task_always_eager = True
    try:
        with app.test_request_context("/eager", base_url="https://eager.example/"):
            assert which_request.delay().get()["path"] == "/eager"
            assert eager_retry.delay().get() == "eager.example"  # retry merged headers=
    finally:
        celery.conf.task_always_eager = False


def test_eager_apply_outside_a_request_replays_the_context_it_is_given(app):
    with app.test_request_context("/origin", base_url="https://origin.example/"):
        token = seal_current_request()
    with app.app_context():
        outcome = which_request.apply(headers={CONTEXT_HEADER: token}).get()
    assert outcome["path"] == "/origin"


def test_outside_a_request_links_use_server_name(app_environ):
    app = make_app(app_environ, SERVER_NAME="blog.example.org", APPLICATION_ROOT="/blog",
                   PREFERRED_URL_SCHEME="https")
    with app.app_context():
        assert external_index_url.apply().get() == "https://blog.example.org/blog/"


def test_outside_a_request_without_server_name_the_error_names_it(app):
    with app.app_context():
        result = external_index_url.apply()
    assert result.failed()
    assert "SERVER_NAME" in str(result.result)


def test_called_directly_outside_any_context_pushes_the_bound_app(app):
    assert celery.flask_app is app
    assert external_index_url.apply().failed()  # runs; fails only for want of SERVER_NAME


def test_replay_runs_the_hooks_flask_would_and_saves_no_session(app_environ):
    app = make_app(app_environ)
    calls = []
    probe = Blueprint("probe_hooks", __name__)

    @probe.route("/probe/<int:number>")
    def numbered(number):
        return ""

    @probe.after_request
    def blueprint_hook(response):
        calls.append("blueprint")
        return response

    app.register_blueprint(probe)

    @app.after_request
    def app_hook(response):
        calls.append("app")
        return response

    saved = []

    class RecordingSessions(SecureCookieSessionInterface):
        """Stands for a server-side session store: a save would write a record."""

        def save_session(self, *args):
            saved.append(args)

    app.session_interface = RecordingSessions()
    with app.test_request_context("/probe/7", base_url="https://blog.example.org"):
        token = seal_current_request()
    with app.app_context():
        # apply() with the header, as the worker runs it: calls is the same list (eager).
        outcome = registers_a_hook_for_this_request.apply((calls,), headers={CONTEXT_HEADER: token}).get()
    assert outcome == {"view_args": {"number": 7}, "blueprint": "probe_hooks"}
    # Flask's order, the microblog's own audit hook among the app's.
    assert calls == ["this request", "blueprint", "app"]
    assert saved == []  # the worker's response reaches nobody: no session is written


# --- what the microblog's defaults carry -------------------------------------------------


def test_default_capture_drops_credentials(app):
    headers = {
        "Cookie": "c", "Authorization": "a", "Proxy-Authorization": "p", "X-CSRFToken": "x",
        "X-CSRF-Token": "x", "X-API-Key": "k", "X-Auth-Token": "t", "X-Session-Id": "s",
        "X-Goog-IAP-JWT-Assertion": "j", "X-Amzn-Oidc-Data": "o",
        "Accept": "text/html", "X-Author": "kept",
    }
    context = carried(app, "/c?page=2&api_key=k&next_token=t&author=me", method="POST", headers=headers,
                      data={"title": "t", "password": "p", "password2": "p", "csrf_token": "c",
                            "client_secret": "s", "author": "kept"})
    environ = context["e"]
    assert {k for k in environ if k.startswith("HTTP_")} == {"HTTP_HOST", "HTTP_ACCEPT", "HTTP_X_AUTHOR"}
    assert environ["QUERY_STRING"] == "page=2&author=me"
    assert "REQUEST_URI" not in environ
    assert context["b"] == "title=t&author=kept"  # a form the view never read travels raw


def test_capture_carries_the_user_whether_or_not_the_view_loaded_it(app, monkeypatch):
    class Someone(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    def no_loading(user_id):
        raise AssertionError("capture should use the user the view already loaded")

    monkeypatch.setattr(app.login_manager, "_user_callback", no_loading)
    with app.test_request_context("/"):
        login_user(Someone("7"))  # the view logged someone in (or login_required loaded them)
        assert sealer(app).open(seal_current_request())["u"] == "7"
    monkeypatch.setattr(app.login_manager, "_user_callback", Someone)
    with app.test_request_context("/"):
        session["_user_id"] = "8"  # in the session, not loaded by the view yet
        assert sealer(app).open(seal_current_request())["u"] == "8"
    assert "u" not in carried(app, "/")  # anonymous


def test_non_string_environ_values_from_servers_are_carried_as_strings(app):
    environ = carried(app, "/port", environ_base={"REMOTE_PORT": 54321, "REMOTE_ADDR": "192.0.2.1"})["e"]
    assert environ["REMOTE_PORT"] == "54321" and environ["REMOTE_ADDR"] == "192.0.2.1"


def test_scrubbing_is_configurable(app_environ):
    app = make_app(app_environ, CELERY_CONTEXT_DROP_HEADERS=["X-Tenant"],
                   CELERY_CONTEXT_SENSITIVE_PATTERN=r"^ssn$")
    context = carried(app, "/c", method="POST", headers={"X-Tenant": "t", "Cookie": "c"},
                      data={"ssn": "123", "password": "kept by choice"})
    assert "HTTP_X_TENANT" not in context["e"] and context["e"]["HTTP_COOKIE"] == "c"
    assert context["b"] == "password=kept+by+choice"


def test_carrier_settings_come_from_the_environment(app_environ):
    config = TestingConfig({**app_environ, "CELERY_CONTEXT_DROP_HEADERS": "X-Tenant, X-Other",
                            "CELERY_CONTEXT_SENSITIVE_PATTERN": "", "CELERY_CONTEXT_MAX_BYTES": "2048",
                            "CELERY_CONTEXT_MAX_AGE": "600"})
    settings = create_app(config).extensions["flask_celery_request"].settings
    assert settings.drop_headers == {"HTTP_X_TENANT", "HTTP_X_OTHER"}
    assert settings.sensitive is None and settings.max_bytes == 2048 and settings.max_age == 600
    defaults = create_app(TestingConfig(app_environ)).extensions["flask_celery_request"].settings
    assert "HTTP_COOKIE" in defaults.drop_headers and defaults.is_sensitive("password2")
    assert defaults.max_bytes == 64 * 1024 and defaults.max_age == 7 * 24 * 3600


def test_a_context_sealed_with_a_retired_key_opens_through_fallbacks(app_environ):
    old = make_app(app_environ, SECRET_KEY="the-old-secret-key-0123456789")
    with old.test_request_context("/rotated"):
        token = seal_current_request()
    new = make_app(app_environ, SECRET_KEY="the-new-secret-key-0123456789",
                   SECRET_KEY_FALLBACKS=["the-old-secret-key-0123456789"])
    assert sealer(new).open(token)["e"]["PATH_INFO"] == "/rotated"
    with new.test_request_context("/resealed"):
        resealed = seal_current_request()  # the new key seals
    with pytest.raises(ContextRefused, match="sealed with another secret"):
        sealer(old).open(resealed)
    stranger = make_app(app_environ, SECRET_KEY="the-new-secret-key-0123456789")
    with pytest.raises(ContextRefused, match="sealed with another secret"):
        sealer(stranger).open(token)


def test_nothing_of_the_request_is_readable_in_the_token(app):
    token_of = {}
    with app.test_request_context("/visible-path?visible-query=1", method="POST",
                                  headers={"X-Visible": "visible-header"},
                                  data={"visible-field": "visible-value"}):
        token_of["form"] = seal_current_request()
    with app.test_request_context("/p", method="POST", json={"visible-key": "visible-json"}):
        token_of["json"] = seal_current_request()
    for token in token_of.values():
        assert "visible" not in token.lower() and "localhost" not in token
    # The same request sealed twice differs: a fresh nonce each time.
    with app.test_request_context("/same"):
        first = seal_current_request()
    with app.test_request_context("/same"):
        assert seal_current_request() != first


# --- limits ------------------------------------------------------------------------------


def test_oversized_body_is_dropped_first_and_logged_once(app_environ, caplog):
    app = make_app(app_environ, CELERY_CONTEXT_MAX_BYTES=4096)

    def warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
        caplog.clear()
        return found

    with caplog.at_level(logging.WARNING, logger="flask_celery_request.capture"):
        context = carried(app, "/big", method="POST", json={"text": "y" * 3000, "more": "z" * 2000})
        assert "b" not in context and context["dropped"] == "body"
        (warning,) = warnings()
        assert "dropped the body" in warning
        context = carried(app, "/big", method="POST", data={"text": "y" * 3000, "more": "z" * 2000})
        assert "f" not in context and context["dropped"] == "body" and context["e"]["PATH_INFO"] == "/big"
        (warning,) = warnings()
        assert "dropped the body" in warning


def test_a_scrubbed_json_body_with_a_lone_surrogate_still_travels(app):
    # "\ud800" is valid JSON but not valid UTF-8 once decoded: re-encoding the scrubbed
    # body must not fail the send, and the task must see the same document minus the secret.
    body = b'{"password": "hunter2", "note": "\\ud800 tail", "n": [1, "\\u00e9"]}'
    with app.test_request_context("/json", method="POST", data=body, content_type="application/json"):
        token = seal_current_request()
    assert "hunter2" not in str(sealer(app).open(token))
    with app.app_context():
        assert replayed_json.apply(headers={CONTEXT_HEADER: token}).get() == {"note": "\ud800 tail",
                                                                             "n": [1, "\u00e9"]}


def test_huge_headers_are_dropped_next_and_a_huge_path_sends_no_context(app_environ, caplog):
    app = make_app(app_environ, CELERY_CONTEXT_MAX_BYTES=4096)
    context = carried(app, "/h?q=1", headers={"X-Huge": "h" * 5000})
    assert "HTTP_X_HUGE" not in context["e"] and context["e"]["HTTP_HOST"] == "localhost"
    assert context["dropped"] == "headers"
    with caplog.at_level(logging.WARNING, logger="flask_celery_request.capture"):
        with app.test_request_context("/" + "p" * 5000):
            assert seal_current_request() is None
            result = which_request.apply_async(queue="unused-queue-for-size-test")  # still enqueues
    assert result.id
    assert any("sending the task without it" in r.getMessage() for r in caplog.records)
    with celery.connection_for_write() as connection:
        connection.default_channel.client.delete("unused-queue-for-size-test")


def test_untrusted_host_is_refused_before_anything_is_enqueued(app_environ, redis_service, unit_redis_db):
    app = make_app(app_environ, TRUSTED_HOSTS=["blog.example.org"])
    sent = []

    @csrf.exempt
    def enqueue():
        sent.append(which_request.apply_async(queue="trusted-hosts-test").id)
        return "queued"

    app.add_url_rule("/enqueue", view_func=enqueue, methods=["POST"])
    client = app.test_client()
    queue = redis_service.client(db=unit_redis_db)
    queue.delete("trusted-hosts-test")
    try:
        refused = client.post("/enqueue", base_url="https://evil.example/")
        assert refused.status_code == 400 and sent == [] and queue.llen("trusted-hosts-test") == 0
        accepted = client.post("/enqueue", base_url="https://blog.example.org/")
        assert accepted.status_code == 200 and len(sent) == 1 and queue.llen("trusted-hosts-test") == 1
    finally:
        queue.delete("trusted-hosts-test")


def test_a_request_sends_its_context_once_for_many_tasks(app, mocker):
    spy = mocker.spy(ContextSettings, "from_config")
    capture = mocker.patch("flask_celery_request.task.capture_request", wraps=capture_request)
    with app.test_request_context("/many"):
        for _ in range(3):
            which_request.apply_async(queue="unused-queue-for-once-test")
    assert capture.call_count == 1 and spy.call_count == 0  # settings read once, by init_app
    with celery.connection_for_write() as connection:
        connection.default_channel.client.delete("unused-queue-for-once-test")
