"""CeleryWithContext in one process: capture, signing, eager runs, settings and limits."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from types import SimpleNamespace

import pytest
from flask import Blueprint, Flask, after_this_request, g, request, session, url_for
from flask_login import UserMixin, login_user
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature, Signer

from app import create_app
from app.celery_context import (
    CONTEXT_HEADER,
    ContextRefused,
    _SIGNING_SALT,
    ContextSettings,
    _ContextSigner,
    _header_from,
    _hmac_states,
    _hmac_with,
    _run_after_request_hooks,
    capture_request,
    replay_request,
    sign_request_context,
    verify_request_context,
)
from app.extensions import celery, csrf
from config import TestingConfig
from tests.conftest import UNIT_REDIS_DB


@celery.task(bind=True)
def which_request(self):
    """The identity of the request the task runs in, and what it sees."""
    return {"request_id": id(request._get_current_object()), "path": request.path,
            "marker": g.get("marker"), "headers": dict(self.request.headers or {})}


@celery.task
def external_index_url():
    return url_for("main.index", _external=True)


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


def test_eager_apply_outside_a_request_carries_the_running_tasks_context(app):
    with app.test_request_context("/origin", base_url="https://origin.example/"):
        token = sign_request_context(app)
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


def test_default_capture_drops_credentials(app):
    settings = ContextSettings.from_config(app.config)
    headers = {
        "Cookie": "c", "Authorization": "a", "Proxy-Authorization": "p", "X-CSRFToken": "x",
        "X-CSRF-Token": "x", "X-API-Key": "k", "X-Auth-Token": "t", "X-Session-Id": "s",
        "Accept": "text/html", "X-Author": "kept",
    }
    with app.test_request_context("/c?page=2&api_key=k&next_token=t&author=me", method="POST", headers=headers,
                                  data={"title": "t", "password": "p", "password2": "p", "csrf_token": "c",
                                        "client_secret": "s", "author": "kept"}):
        context = capture_request(settings)
    carried = context["e"]
    assert {k for k in carried if k.startswith("HTTP_")} == {"HTTP_HOST", "HTTP_ACCEPT", "HTTP_X_AUTHOR"}
    assert carried["QUERY_STRING"] == "page=2&author=me"
    assert "REQUEST_URI" not in carried
    assert context["f"] == [["title", "t"], ["author", "kept"]]


@pytest.mark.parametrize("remember_shapes", [True, False])
def test_capture_keeps_the_same_environ_entries_whether_its_shape_is_known_or_not(
        app, monkeypatch, remember_shapes):
    if not remember_shapes:
        monkeypatch.setattr("app.celery_context._MAX_ENVIRON_PLANS", 0)
    settings = ContextSettings.from_config(app.config)
    requests = [
        {"headers": {"Accept": "a", "X-One": "1"}},
        {"headers": {"Accept": "b", "X-One": "2"}},  # same shape, other values
        {"headers": {"Accept": "c", "X-One": "3", "Cookie": "s=1", "X-Two": "t"}},  # a new shape
        {"headers": {"Accept": "d", "X-One": "4"}, "environ_base": {"REMOTE_PORT": 5000, "HTTP_X_NONE": None}},
        {"headers": {"Accept": "e", "X-" + "Long" * 1100: "5"}},  # too big a shape to remember
    ]
    # Twice: the second time round every remembered shape is known, the int and None included.
    for index, options in enumerate(requests * 2):
        with app.test_request_context(f"/shape/{index}?n={index}", **options):
            environ = request.environ
            expected = {key: str(value) for key, value in environ.items()
                        if value is not None and (key in {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO",
                                                          "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                                                          "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT",
                                                          "wsgi.url_scheme"}
                                                  or key.startswith("HTTP_") and key != "HTTP_COOKIE")}
            carried = capture_request(settings)["e"]
        assert list(carried.items()) == list(expected.items())  # same entries, same order
        assert all(type(value) is str for value in carried.values())
        if "environ_base" in options:
            assert carried["REMOTE_PORT"] == "5000" and "HTTP_X_NONE" not in carried
    assert len(settings._environ_plans) == (3 if remember_shapes else 0)
    assert not any(len(name) > 256 for name in settings._carried_keys)


def test_capture_carries_the_user_whether_or_not_the_view_loaded_it(app, monkeypatch):
    class Someone(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    def no_loading(user_id):
        raise AssertionError("capture should use the user the view already loaded")

    settings = ContextSettings.from_config(app.config)
    monkeypatch.setattr(app.login_manager, "_user_callback", no_loading)
    with app.test_request_context("/"):
        login_user(Someone("7"))  # the view logged someone in (or login_required loaded them)
        assert capture_request(settings)["u"] == "7"
    monkeypatch.setattr(app.login_manager, "_user_callback", Someone)
    with app.test_request_context("/"):
        session["_user_id"] = "8"  # in the session, not loaded by the view yet
        assert capture_request(settings)["u"] == "8"
    with app.test_request_context("/"):
        assert "u" not in capture_request(settings)  # anonymous


def test_non_string_environ_values_from_servers_are_carried_as_strings(app):
    with app.test_request_context("/port", environ_base={"REMOTE_PORT": 54321, "REMOTE_ADDR": "192.0.2.1"}):
        token = sign_request_context(app)
    carried = verify_request_context(app, token)["e"]
    assert carried["REMOTE_PORT"] == "54321" and carried["REMOTE_ADDR"] == "192.0.2.1"


def test_scrubbing_is_configurable(app_environ):
    app = make_app(app_environ, CELERY_CONTEXT_DROP_HEADERS=["X-Tenant"],
                   CELERY_CONTEXT_SENSITIVE_PATTERN=r"^ssn$")
    settings = ContextSettings.from_config(app.config)
    with app.test_request_context("/c", method="POST", headers={"X-Tenant": "t", "Cookie": "c"},
                                  data={"ssn": "123", "password": "kept by choice"}):
        context = capture_request(settings)
    assert "HTTP_X_TENANT" not in context["e"] and context["e"]["HTTP_COOKIE"] == "c"
    assert context["f"] == [["password", "kept by choice"]]


def test_scrubbing_settings_come_from_the_environment(app_environ):
    config = TestingConfig({**app_environ, "CELERY_CONTEXT_DROP_HEADERS": "X-Tenant, X-Other",
                            "CELERY_CONTEXT_SENSITIVE_PATTERN": "", "CELERY_CONTEXT_MAX_BYTES": "2048"})
    settings = ContextSettings.from_config(create_app(config).config)
    assert settings.drop_headers == {"HTTP_X_TENANT", "HTTP_X_OTHER"}
    assert settings.sensitive is None and settings.max_bytes == 2048
    defaults = ContextSettings.from_config(create_app(TestingConfig(app_environ)).config)
    assert "HTTP_COOKIE" in defaults.drop_headers and defaults.is_sensitive("password2")


def test_token_signed_with_a_retired_key_verifies_through_fallbacks(app_environ):
    old = make_app(app_environ, SECRET_KEY="the-old-secret-key-0123456789")
    with old.test_request_context("/rotated"):
        token = sign_request_context(old)
    new = make_app(app_environ, SECRET_KEY="the-new-secret-key-0123456789",
                   SECRET_KEY_FALLBACKS=["the-old-secret-key-0123456789"])
    assert verify_request_context(new, token)["e"]["PATH_INFO"] == "/rotated"
    stranger = make_app(app_environ, SECRET_KEY="the-new-secret-key-0123456789")
    with pytest.raises(ContextRefused, match="signature does not match"):
        verify_request_context(stranger, token)


@pytest.mark.parametrize("keys", [
    ["only-key-0123456789abcdef"],
    ["retired-key-0123456789", "current-key-0123456789"],
    ["a-long-secret-" * 20],
])
def test_signatures_are_itsdangerous_hmac_sha1_both_ways(keys):
    """The fast signer is itsdangerous' Signer: each verifies what the other signs."""
    payload = '{"v":1,"e":{"PATH_INFO":"/caf\u00e9"}}'.encode()
    reference = Signer(keys, salt=_SIGNING_SALT, digest_method=hashlib.sha1)
    fast = _ContextSigner(keys, salt=_SIGNING_SALT)
    assert fast.sign(payload) == reference.sign(payload)
    assert fast.unsign(reference.sign(payload)) == payload
    for key in keys:  # every key verifies, the newest signs
        assert fast.unsign(Signer(key, salt=_SIGNING_SALT, digest_method=hashlib.sha1).sign(payload)) == payload
    assert reference.unsign(fast.sign(payload)) == payload
    derived = reference.derive_key()
    assert fast.get_signature(payload) == base64.urlsafe_b64encode(
        hmac.digest(derived, payload, "sha1")).rstrip(b"=")
    tampered = fast.sign(payload).replace(b"caf", b"cab")
    for bad in (tampered, payload, payload + b".", payload + b".!!!!", payload + b"." + b"A" * 27,
                "\udc80." + fast.get_signature(payload).decode()):  # a lone surrogate is not UTF-8
        with pytest.raises(BadSignature):
            fast.unsign(bad)


@pytest.mark.parametrize("key_length", [0, 20, 64, 65, 200])
def test_the_hand_built_hmac_is_rfc_2104s(key_length):
    key, message = bytes(range(256))[:key_length] * 1, b"message " * 200
    assert _hmac_with(_hmac_states(hashlib.sha1, key), message) == hmac.digest(key, message, "sha1")


def test_a_token_that_is_not_utf8_text_is_refused_not_crashed_on(app):
    with pytest.raises(ContextRefused):
        verify_request_context(app, "\udc80.QmOQ2hLJvvBMszOuZzf3mUn5dTs")


@pytest.mark.parametrize("token, reason", [
    ("", "must be a signed string"),
    (None, "must be a signed string"),
    ('{"v":1,"e":{}}', "unsigned"),
    ("abc.def", "signature does not match"),
])
def test_verify_names_the_problem(app, token, reason):
    with pytest.raises(ContextRefused, match=reason):
        verify_request_context(app, token)


def test_oversized_body_is_dropped_first_and_logged_once(app_environ, caplog):
    app = make_app(app_environ, CELERY_CONTEXT_MAX_BYTES=4096)
    with caplog.at_level(logging.WARNING, logger="app.celery_context"):
        with app.test_request_context("/big", method="POST", json={"text": "y" * 3000, "more": "z" * 2000}):
            context = verify_request_context(app, sign_request_context(app))
    assert "b" not in context and context["dropped"] == "body"
    with caplog.at_level(logging.WARNING, logger="app.celery_context"):
        with app.test_request_context("/big", method="POST", data={"text": "y" * 3000, "more": "z" * 2000}):
            context = verify_request_context(app, sign_request_context(app))
    assert "f" not in context and context["e"]["PATH_INFO"] == "/big"
    assert len([r for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]) == 1


def test_a_scrubbed_json_body_with_a_lone_surrogate_still_travels(app):
    # "\ud800" is valid JSON but not valid UTF-8 once decoded: re-encoding the scrubbed
    # body must not fail the send, and the task must see the same document minus the secret.
    body = b'{"password": "hunter2", "note": "\\ud800 tail", "n": [1, "\\u00e9"]}'
    with app.test_request_context("/json", method="POST", data=body, content_type="application/json"):
        token = sign_request_context(app)
    context = verify_request_context(app, token)
    assert b"hunter2" not in token.encode()
    with replay_request(app, context, token):
        assert request.get_json() == {"note": "\ud800 tail", "n": [1, "\u00e9"]}


def test_huge_headers_are_dropped_next_and_a_huge_path_sends_no_context(app_environ, caplog):
    app = make_app(app_environ, CELERY_CONTEXT_MAX_BYTES=4096)
    with app.test_request_context("/h?q=1", headers={"X-Huge": "h" * 5000}):
        context = verify_request_context(app, sign_request_context(app))
    assert "HTTP_X_HUGE" not in context["e"] and context["e"]["HTTP_HOST"] == "localhost"
    assert context["dropped"] == "headers"
    with caplog.at_level(logging.WARNING, logger="app.celery_context"):
        with app.test_request_context("/" + "p" * 5000):
            assert sign_request_context(app) is None
            result = which_request.apply_async(queue="unused-queue-for-size-test")  # still enqueues
    assert result.id
    assert any("sending the task without it" in r.getMessage() for r in caplog.records)


def test_untrusted_host_is_refused_before_anything_is_enqueued(app_environ, redis_service):
    app = make_app(app_environ, TRUSTED_HOSTS=["blog.example.org"])
    sent = []

    @csrf.exempt
    def enqueue():
        sent.append(which_request.apply_async(queue="trusted-hosts-test").id)
        return "queued"

    app.add_url_rule("/enqueue", view_func=enqueue, methods=["POST"])
    client = app.test_client()
    queue = redis_service.client(db=UNIT_REDIS_DB)
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
    capture = mocker.patch("app.celery_context.capture_request", wraps=capture_request)
    with app.test_request_context("/many"):
        for _ in range(3):
            which_request.apply_async(queue="unused-queue-for-once-test")
    assert capture.call_count == 1 and spy.call_count == 0
    from app.extensions import celery as app_celery

    with app_celery.connection_for_write() as connection:
        connection.default_channel.client.delete("unused-queue-for-once-test")


@pytest.mark.parametrize("holder", [
    SimpleNamespace(**{CONTEXT_HEADER: "tok", "headers": None}),
    SimpleNamespace(headers={CONTEXT_HEADER: "tok"}),
    SimpleNamespace(headers={"headers": {CONTEXT_HEADER: "tok"}}),
])
def test_header_is_read_wherever_celery_or_tools_put_it(holder):
    assert _header_from(holder) == "tok"


def test_no_header_reads_as_none():
    assert _header_from(SimpleNamespace(headers=None)) is None
    assert _header_from(None) is None


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
        token = sign_request_context(app)

    with replay_request(app, verify_request_context(app, token), token):
        assert request.view_args == {"number": 7} and request.blueprint == "probe_hooks"

        @after_this_request
        def this_request_only(response):
            calls.append("this request")
            return response

    assert calls == ["this request", "blueprint", "app"]  # Flask's order
    assert saved == []  # the worker's response reaches nobody: no session is written


def test_an_app_overriding_process_response_gets_its_own():
    seen = []

    class CustomFlask(Flask):
        def process_response(self, response):
            seen.append("custom")
            return super().process_response(response)

    custom = CustomFlask(__name__)
    with custom.test_request_context("/"):
        _run_after_request_hooks(custom, custom.response_class())
    assert seen == ["custom"]
