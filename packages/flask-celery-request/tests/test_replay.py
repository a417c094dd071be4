"""Replay: the worker's request is the sender's, and runs the app's hooks around the task."""
from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from flask import (Blueprint, Flask, Response, after_this_request, current_app, g, has_app_context,
                   has_request_context, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface

from conftest import describe_request, make_app
from flask_celery_request.capture import capture_request
from flask_celery_request.replay import ENVIRON_TOKEN_KEY, environ_from_context, replay_request
from flask_celery_request.settings import ContextSettings

SENDER = {
    "base_url": "https://shop.example.org:8443/prefix",
    "headers": {"User-Agent": "Mozilla/5.0 test", "Accept-Language": "fr-FR,fr;q=0.9", "X-Request-Id": "r-77"},
    "environ_base": {"REMOTE_ADDR": "203.0.113.20", "REMOTE_PORT": 50123},
}


def captured(app: Flask, path: str = "/orders/42", **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the sender's request looked like, its carried context)."""
    options = {**SENDER, **kwargs}
    with app.test_request_context(path, **options):
        seen = describe_request()
        context = capture_request(request, ContextSettings.from_config(app.config), None)
    return seen, context


@pytest.fixture
def shop() -> Flask:
    app = make_app()
    app.add_url_rule("/orders/<int:number>", "order", lambda number: "")
    bp = Blueprint("bp", __name__, url_prefix="/bp")
    bp.add_url_rule("/thing", "thing", lambda: "")
    app.register_blueprint(bp)
    return app


def test_environ_rebuilt_from_the_context() -> None:
    context = {"e": {"REQUEST_METHOD": "PUT", "PATH_INFO": "/x", "wsgi.url_scheme": "https"}, "b": "h\u00e9"}
    environ = environ_from_context(context, token="fcr1.tok")
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["wsgi.url_scheme"]) == ("PUT", "/x", "https")
    assert environ["SERVER_NAME"] == "localhost" and environ["SCRIPT_NAME"] == ""  # defaults where absent
    assert environ["wsgi.input"].read() == "h\u00e9".encode()
    assert environ[ENVIRON_TOKEN_KEY] == "fcr1.tok"


def test_the_request_is_the_senders(shop: Flask) -> None:
    """URL, headers (same order), query, client address: byte for byte."""
    seen, context = captured(shop, query_string="a=1&b=%2F+x&a=2")
    with replay_request(shop, context):
        assert describe_request() == seen


def test_url_for_external_uses_the_senders_scheme_host_port_and_root(shop: Flask) -> None:
    _, context = captured(shop)
    with replay_request(shop, context):
        assert url_for("order", number=7, _external=True) == "https://shop.example.org:8443/prefix/orders/7"
        assert request.url_rule.endpoint == "order" and request.view_args == {"number": 42}


def test_form_arrives_parsed(shop: Flask) -> None:
    seen, context = captured(shop, method="POST",
                             data="tag=a&title=T%C3%A9&tag=b", content_type="application/x-www-form-urlencoded")
    with replay_request(shop, context):
        assert list(request.form.items(multi=True)) == [("tag", "a"), ("tag", "b"), ("title", "T\u00e9")]
        assert request.form.getlist("tag") == ["a", "b"]
        assert not request.files
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_json_body_replayed(shop: Flask) -> None:
    _, context = captured(shop, method="POST", json={"title": "t", "password": "p", "n": [1, 2]})
    with replay_request(shop, context):
        assert request.get_json() == {"title": "t", "n": [1, 2]}
        assert request.content_length == len(request.get_data())


def test_chunked_body_replayed(shop: Flask) -> None:
    raw = b'{"n": [1, 2, 3]}'
    with shop.test_request_context("/orders/1", method="POST", content_type="application/json",
                                   headers={"Transfer-Encoding": "chunked"},
                                   environ_overrides={"wsgi.input_terminated": True, "wsgi.input": BytesIO(raw)}):
        request.environ.pop("CONTENT_LENGTH", None)
        assert request.get_json() == {"n": [1, 2, 3]}  # the view read it
        context = capture_request(request, ContextSettings.from_config(shop.config), None)
    with replay_request(shop, context):
        assert request.get_data() == raw
        assert request.get_json() == {"n": [1, 2, 3]}
        assert request.content_length == len(raw)


def test_binary_body_replayed(shop: Flask) -> None:
    raw = bytes(range(255, -1, -1))
    seen, context = captured(shop, method="POST", data=raw, content_type="application/octet-stream")
    with replay_request(shop, context):
        assert request.get_data() == raw
        assert describe_request() == seen


def test_after_request_hooks_run_in_flask_order() -> None:
    """after_this_request first, then the blueprint's hooks, then the app's, each in reverse."""
    calls: list[str] = []

    def hook(name: str):
        def record(response: Response) -> Response:
            calls.append(name)
            return response
        return record

    app = make_app()
    bp = Blueprint("bp", __name__, url_prefix="/bp")
    bp.add_url_rule("/thing", "thing", lambda: "")
    bp.after_request(hook("bp-1"))
    bp.after_request(hook("bp-2"))
    other = Blueprint("other", __name__, url_prefix="/other")
    other.after_request(hook("other-blueprint"))
    app.register_blueprint(bp)
    app.register_blueprint(other)
    app.after_request(hook("app-1"))
    app.after_request(hook("app-2"))
    _, context = captured(app, "/bp/thing")
    with replay_request(app, context):
        after_this_request(hook("this-request"))
        calls.append("task")
    assert calls == ["task", "this-request", "bp-2", "bp-1", "app-2", "app-1"]


def test_after_request_sees_an_empty_200(shop: Flask) -> None:
    responses: list[tuple[int, bytes]] = []

    @shop.after_request
    def record(response: Response) -> Response:
        responses.append((response.status_code, response.get_data()))
        return response

    _, context = captured(shop)
    with replay_request(shop, context):
        pass
    assert responses == [(200, b"")]


def test_teardown_runs_with_the_exception_and_after_request_does_not(shop: Flask) -> None:
    _, context = captured(shop)
    seen: list[Any] = []
    shop.teardown_request(lambda exc: seen.append(("teardown", exc)))
    shop.after_request(lambda response: seen.append("after") or response)
    failure = ValueError("the task failed")
    with pytest.raises(ValueError, match="the task failed"):
        with replay_request(shop, context):
            raise failure
    assert seen == [("teardown", failure)]
    assert not has_request_context()


def test_teardown_runs_with_none_on_success(shop: Flask) -> None:
    _, context = captured(shop)
    seen: list[Any] = []
    shop.teardown_request(lambda exc: seen.append(exc))
    with replay_request(shop, context):
        pass
    assert seen == [None]


def test_before_request_hooks_do_not_run(shop: Flask) -> None:
    """They belong to the view, which already ran them in the web process."""
    calls: list[str] = []
    shop.before_request(lambda: calls.append("before"))
    _, context = captured(shop)
    with replay_request(shop, context):
        pass
    assert calls == []


class RecordingSessions(SecureCookieSessionInterface):
    """The default cookie sessions, recording when Flask opens or saves one."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def open_session(self, app: Flask, request: Any) -> Any:
        self.calls.append("open")
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        self.calls.append("save")
        super().save_session(app, session, response)


def test_session_is_empty_and_neither_opened_nor_saved(shop: Flask) -> None:
    """The cookie is not carried; whatever the task writes, no session is opened or saved
    (a server-side session store would otherwise get a record per task)."""
    sessions = shop.session_interface = RecordingSessions()
    with shop.test_request_context("/"):
        session["cart"] = "sender's"
        response = shop.make_response("")
        sessions.save_session(shop, session, response)
        cookie = response.headers["Set-Cookie"].split(";")[0]
    _, context = captured(shop, headers={**SENDER["headers"], "Cookie": cookie})
    sessions.calls.clear()
    with replay_request(shop, context):
        assert "Cookie" not in request.headers
        assert dict(session) == {}
        session["written"] = "by the task"
        session.permanent = True
        assert session["written"] == "by the task"
    assert sessions.calls == []


def test_replay_gets_its_own_g_even_inside_an_app_context(shop: Flask) -> None:
    """On Flask 3.1 a request would reuse a pushed app context's g; a replay never does."""
    _, context = captured(shop)
    with shop.app_context():
        g.outer = "outer"
        with replay_request(shop, context):
            assert "outer" not in g
            g.inner = "inner"
            assert current_app._get_current_object() is shop
        assert g.outer == "outer"
        assert "inner" not in g
        assert has_app_context() and not has_request_context()


def test_replay_inside_another_request_is_its_own(shop: Flask) -> None:
    _, context = captured(shop)
    with shop.test_request_context("/elsewhere"):
        g.outer = 1
        with replay_request(shop, context):
            assert request.path == "/orders/42"
            assert "outer" not in g
        assert request.path == "/elsewhere" and g.outer == 1


def test_context_popped_after(shop: Flask) -> None:
    _, context = captured(shop)
    with replay_request(shop, context):
        assert has_request_context()
    assert not has_app_context()


def test_url_defaults_when_the_context_has_no_host(shop: Flask) -> None:
    """A context stripped to fit (no headers) still has SERVER_NAME and the scheme."""
    _, context = captured(shop)
    context["e"] = {key: value for key, value in context["e"].items() if not key.startswith("HTTP_")}
    with replay_request(shop, context):
        assert url_for("order", number=1, _external=True) == "https://shop.example.org:8443/prefix/orders/1"


def test_scrubbed_json_is_what_the_view_would_read_less_secrets(shop: Flask) -> None:
    document = {"a": {"b": {"token": "t", "c": [1, {"pin": "0000", "d": "e"}]}}}
    _, context = captured(shop, method="PATCH", json=document)
    with replay_request(shop, context):
        assert json.loads(request.get_data()) == {"a": {"b": {"c": [1, {"d": "e"}]}}}
        assert request.method == "PATCH"
