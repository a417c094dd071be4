"""Capture: what of the live request is carried, and the credentials that never are."""
from __future__ import annotations

import base64
import json
import logging
from io import BytesIO
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.datastructures import MultiDict

from conftest import make_app, sealer_of
from flask_celery_request import ContextCaptureError, CeleryWithContext, current_context
from flask_celery_request.capture import MAX_JSON_DEPTH, capture_request
from flask_celery_request.settings import CARRIED_ENVIRON_KEYS
from flask_celery_request.settings import ContextSettings

CAPTURE_LOGGER = "flask_celery_request.capture"


def capture(app: Flask | None = None, *args: Any, user_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The carried form of the request ``app.test_request_context(*args, **kwargs)`` builds."""
    app = app or make_app()
    with app.test_request_context(*args, **kwargs):
        return capture_request(request, ContextSettings.from_config(app.config), user_id)


def test_environ_carries_only_what_werkzeug_reads() -> None:
    """No raw request line, no wsgi.* objects, no werkzeug internals: only the listed keys."""
    context = capture(None, "/a/b", base_url="https://example.org:8443/root", query_string="x=1",
                      headers={"User-Agent": "ua/1"}, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    environ = context["e"]
    assert all(key in CARRIED_ENVIRON_KEYS or key.startswith("HTTP_") for key in environ)
    assert not {"REQUEST_URI", "RAW_URI", "wsgi.input", "wsgi.errors", "werkzeug.request"} & set(environ)
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["wsgi.url_scheme"] == "https"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["HTTP_HOST"]) == (
        "example.org", "8443", "example.org:8443")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/root", "/a/b", "x=1")
    assert environ["REMOTE_ADDR"] == "198.51.100.7"
    assert environ["HTTP_USER_AGENT"] == "ua/1"
    assert all(type(value) is str for value in environ.values())


def test_environ_keeps_the_servers_order() -> None:
    """request.headers lists Content-Type among the HTTP_* keys where the server put them."""
    app = make_app()
    with app.test_request_context("/", method="POST", data=b"x", content_type="text/plain",
                                  headers=[("X-First", "1"), ("X-Second", "2")]):
        environ = dict(request.environ)
        environ = {"HTTP_X_ZERO": "0", **environ}  # a header before CONTENT_TYPE, as gunicorn does
        request.environ.clear()
        request.environ.update(environ)
        context = capture_request(request, ContextSettings.from_config(app.config), None)
        carried_order = [key for key in environ if key in context["e"]]
    assert list(context["e"]) == carried_order
    assert list(context["e"]).index("HTTP_X_ZERO") < list(context["e"]).index("CONTENT_TYPE")


def test_remote_port_int_becomes_str() -> None:
    """werkzeug's dev server puts an int there; the sealed environ holds strings only."""
    context = capture(None, "/", environ_base={"REMOTE_PORT": 51234})
    assert context["e"]["REMOTE_PORT"] == "51234"


@pytest.mark.parametrize("query, kept", [
    ("q=1&password=hunter2&page=2", "q=1&page=2"),
    ("pas%73word=x&q=1", "q=1"),                       # percent-encoded name, judged decoded
    ("q=1&access_token=t&oneTimeCode=1&pin=9&page=3", "q=1&page=3"),
    ("user%5Bpassword%5D=x&user%5Bname%5D=n", "user%5Bname%5D=n"),
    ("api+key=k&q=a+b", "q=a+b"),                      # '+' is a space in a name too
    ("a=1&&b=%2F+c&a=2&=x&flag", "a=1&&b=%2F+c&a=2&=x&flag"),  # nothing scrubbed: byte for byte
    ("author=me&spinner=1&country_code=fr", "author=me&spinner=1&country_code=fr"),
])
def test_query_string_scrubbed_by_name(query: str, kept: str) -> None:
    assert capture(None, "/", query_string=query)["e"]["QUERY_STRING"] == kept


def test_credential_headers_dropped_by_name_and_list() -> None:
    """The listed credential headers, and any header whose name matches the pattern."""
    headers = {
        "Cookie": "session=abc", "Authorization": "Bearer t", "Proxy-Authorization": "Basic x",
        "X-Goog-IAP-JWT-Assertion": "eyJ.a.b", "Cf-Access-Jwt-Assertion": "eyJ.c.d",
        "X-Amzn-Oidc-Data": "eyJ.e.f", "X-Amzn-Oidc-Accesstoken": "at", "X-CSRFToken": "c",
        "X-Session-Token": "s", "X-Hub-Signature-256": "sha256=0",
        "User-Agent": "ua", "Accept-Language": "fr-FR", "X-Request-Id": "r-1", "X-Author": "me",
    }
    environ = capture(None, "/", headers=headers)["e"]
    carried = {key[5:] for key in environ if key.startswith("HTTP_")}
    assert carried == {"HOST", "USER_AGENT", "ACCEPT_LANGUAGE", "X_REQUEST_ID", "X_AUTHOR"}


def test_url_valued_headers_scrubbed_of_credentials_in_their_query() -> None:
    """A Referer of an OAuth callback carries the token; the rest of the URL is kept."""
    environ = capture(None, "/", headers={
        "Referer": "https://example.org/cb?code=abc&state=s&access_token=t#section",
        "Origin": "https://example.org",
        "X-Original-URL": "/reset?reset_code=1&lang=fr",
        "X-Note": "see ?token=not-a-url-header",
    })["e"]
    assert environ["HTTP_REFERER"] == "https://example.org/cb?state=s#section"
    assert environ["HTTP_ORIGIN"] == "https://example.org"
    assert environ["HTTP_X_ORIGINAL_URL"] == "/reset?lang=fr"
    assert environ["HTTP_X_NOTE"] == "see ?token=not-a-url-header"


FORM_BODY = "tag=b&password=hunter2&title=t&tag=a&csrf_token=c&tag=b&cardNumber=4111&empty="


def test_a_form_the_view_read_travels_parsed_multi_valued_less_secrets() -> None:
    """Every value of a repeated field, in the order sent (request.form groups by name)."""
    app = make_app()
    with app.test_request_context("/", method="POST", data=FORM_BODY,
                                  content_type="application/x-www-form-urlencoded"):
        request.form  # the view read it: the body stream is spent
        context = capture_request(request, ContextSettings.from_config(app.config), None)
    assert context["f"] == [["tag", "b"], ["tag", "a"], ["tag", "b"], ["title", "t"], ["empty", ""]]
    assert "b" not in context and "b64" not in context


def test_a_form_the_view_never_read_travels_raw_less_secrets_and_stays_readable() -> None:
    """Not parsed at send time (that costs more than the rest of capture): the body as
    it came, less its sensitive fields, byte for byte; the view can still read it."""
    app = make_app()
    with app.test_request_context("/", method="POST", data=FORM_BODY,
                                  content_type="application/x-www-form-urlencoded"):
        context = capture_request(request, ContextSettings.from_config(app.config), None)
        assert request.form.getlist("tag") == ["b", "a", "b"]
    assert context["b"] == "tag=b&title=t&tag=a&tag=b&empty="
    assert context["e"]["CONTENT_LENGTH"] == str(len(context["b"]))
    assert "f" not in context


def test_a_large_unread_multipart_upload_is_not_parsed_at_send_time(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(CELERY_CONTEXT_MAX_BYTES=2048)
    data = {"title": "t", "upload": (BytesIO(b"x" * 10_000), "big.bin")}
    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        with app.test_request_context("/", method="POST", data=data, content_type="multipart/form-data"):
            context = capture_request(request, ContextSettings.from_config(app.config), None)
            assert "form" not in vars(request)
    assert context["dropped"] == "body" and "f" not in context
    assert ["dropped the body to fit" in record.getMessage() for record in caplog.records] == [True]


def test_multipart_fields_carried_but_not_files() -> None:
    data = {"title": "report", "note": ["n1", "n2"], "upload": (BytesIO(b"FILE-CONTENT-XYZ"), "report.pdf")}
    app = make_app()
    context = capture(app, "/", method="POST", data=data, content_type="multipart/form-data")
    assert context["f"] == [["title", "report"], ["note", "n1"], ["note", "n2"]]
    encoded = json.dumps(context)
    assert "FILE-CONTENT-XYZ" not in encoded and "report.pdf" not in encoded


def test_json_body_scrubbed_at_any_depth() -> None:
    document = {"title": "t", "password": "p", "user": {"name": "n", "apiKey": "k",
                                                        "devices": [{"otp": "123456", "model": "x"}]}}
    context = capture(None, "/", method="POST", json=document)
    body = context["b"]
    assert json.loads(body) == {"title": "t", "user": {"name": "n", "devices": [{"model": "x"}]}}
    assert context["e"]["CONTENT_LENGTH"] == str(len(body.encode("utf-8")))


def test_json_body_byte_exact_when_nothing_scrubbed() -> None:
    raw = '{ "title" : "caf\u00e9",\n  "n": [1, 2.50, 1e3], "a": "\\u00e9" }'.encode()
    context = capture(None, "/", method="POST", data=raw, content_type="application/json")
    assert context["b"].encode("utf-8") == raw
    assert context["e"]["CONTENT_LENGTH"] == str(len(raw))


def test_json_typed_body_that_is_not_json_is_carried_as_is() -> None:
    raw = b"{not json"
    context = capture(None, "/", method="POST", data=raw, content_type="application/json")
    assert context["b"] == "{not json"


def test_text_body_carried_as_text() -> None:
    context = capture(None, "/", method="PUT", data="h\u00e9llo".encode(), content_type="text/plain; charset=utf-8")
    assert context["b"] == "h\u00e9llo"


def test_binary_body_carried_base64() -> None:
    raw = bytes(range(256))
    context = capture(None, "/", method="POST", data=raw, content_type="application/octet-stream")
    assert "b" not in context
    assert base64.b64decode(context["b64"]) == raw
    assert context["e"]["CONTENT_LENGTH"] == "256"


def chunked(body: bytes, content_type: str) -> dict[str, Any]:
    """A chunked request as gunicorn or werkzeug's server passes it: no Content-Length."""
    return {"method": "POST", "content_type": content_type, "headers": {"Transfer-Encoding": "chunked"},
            "environ_overrides": {"wsgi.input_terminated": True, "wsgi.input": BytesIO(body)}}


def capture_chunked(app: Flask, body: bytes, content_type: str) -> dict[str, Any]:
    with app.test_request_context("/chunked", **chunked(body, content_type)):
        request.environ.pop("CONTENT_LENGTH", None)
        assert request.content_length is None
        return capture_request(request, ContextSettings.from_config(app.config), None)


def test_chunked_body_carried_with_its_length() -> None:
    """The body of a chunked upload is read like any other; it travels as a plain body."""
    context = capture_chunked(make_app(), b'{"title": "t", "token": "x"}', "application/json")
    assert json.loads(context["b"]) == {"title": "t"}
    assert context["e"]["CONTENT_LENGTH"] == str(len(context["b"]))
    assert "HTTP_TRANSFER_ENCODING" not in context["e"]


def test_chunked_body_above_the_limit_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        context = capture_chunked(make_app(CELERY_CONTEXT_MAX_BYTES=1024), b"z" * 5000, "text/plain")
    assert context["dropped"] == "body" and "b" not in context
    assert any("5000 bytes" in record.getMessage() for record in caplog.records)


def test_get_without_body_carries_no_body_or_form() -> None:
    context = capture(None, "/search", query_string="q=x")
    assert not {"b", "b64", "f", "u", "dropped"} & set(context)


def test_user_id_carried() -> None:
    assert capture(None, "/", user_id="42")["u"] == "42"
    assert "u" not in capture(None, "/")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 30_000])  # 30000: json.loads recurses too deep
def test_json_nested_too_deep_refused(depth: int) -> None:
    """Too deep to scrub (or to parse): refused rather than carried unscrubbed."""
    with pytest.raises(ContextCaptureError, match="nested more than 100 levels"):
        capture(None, "/", method="POST", data=nested(depth), content_type="application/json")


def test_json_nested_to_the_limit_is_carried() -> None:
    body = nested(MAX_JSON_DEPTH)
    assert capture(None, "/", method="POST", data=body, content_type="application/json")["b"] == body.decode()


def test_too_deep_json_fails_the_send_and_nothing_is_published(app: Flask, celery: CeleryWithContext,
                                                               published) -> None:
    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/", method="POST", data=nested(500), content_type="application/json"):
        with pytest.raises(ContextCaptureError):
            noop.apply_async()
    assert published.messages == []


# --- size limits: body, then headers and query, then no context ----------------------------


def sealed_context(app: Flask, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """What a task sent from this request would carry, opened again; None if nothing."""
    CeleryWithContext(app)
    with app.test_request_context(*args, **kwargs):
        token = current_context()
    return None if token is None else sealer_of(app).open(token)


def test_body_above_the_limit_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(CELERY_CONTEXT_MAX_BYTES=2048)
    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        context = sealed_context(app, "/upload", method="POST", data=b"x" * 5000, content_type="text/plain")
    assert context is not None
    assert context["dropped"] == "body"
    assert "b" not in context and "CONTENT_LENGTH" not in context["e"]
    assert context["e"]["PATH_INFO"] == "/upload"
    assert any("CELERY_CONTEXT_MAX_BYTES=2048" in record.getMessage() and "body" in record.getMessage()
               for record in caplog.records)


def test_form_that_makes_the_context_too_big_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(CELERY_CONTEXT_MAX_BYTES=2048)
    form = MultiDict([("field", "y" * 300)] * 8)  # each field under the limit, the whole over
    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        context = sealed_context(app, "/f", method="POST", data=form, headers={"X-Keep": "1"})
    assert context["dropped"] == "body"
    assert "f" not in context and "b" not in context
    assert context["e"]["HTTP_X_KEEP"] == "1"  # headers kept: the body alone was enough
    assert ["dropped the body" in record.getMessage() for record in caplog.records] == [True]


def test_headers_and_query_dropped_next_host_kept(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(CELERY_CONTEXT_MAX_BYTES=2048)
    headers = {f"X-Big-{n}": "z" * 200 for n in range(12)}
    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        context = sealed_context(app, "/h", base_url="https://example.org", query_string="q=" + "q" * 100,
                                 headers=headers)
    assert context["dropped"] == "headers"
    assert [key for key in context["e"] if key.startswith("HTTP_")] == ["HTTP_HOST"]
    assert "QUERY_STRING" not in context["e"]
    assert (context["e"]["PATH_INFO"], context["e"]["wsgi.url_scheme"]) == ("/h", "https")
    assert any("dropped the body, form, headers and query" in record.getMessage() for record in caplog.records)


def test_no_context_at_all_when_even_the_path_does_not_fit(app: Flask, published,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Sending never fails for size: the task goes without a context, in an app context."""
    app.config["CELERY_CONTEXT_MAX_BYTES"] = 1024
    celery = CeleryWithContext(app)

    @celery.task
    def where() -> tuple[bool, bool]:
        from flask import has_app_context, has_request_context

        return has_app_context(), has_request_context()

    with caplog.at_level(logging.WARNING, CAPTURE_LOGGER):
        with app.test_request_context("/" + "p" * 3000):
            assert current_context() is None
            where.apply_async()
    assert published.tokens == [None]
    assert any("sending the task without it" in record.getMessage() for record in caplog.records)
    assert where.apply().get() == (True, False)


@pytest.mark.parametrize("remember", [True, False])
def test_the_environ_plan_gives_the_same_capture_whether_remembered_or_not(
        monkeypatch: pytest.MonkeyPatch, remember: bool) -> None:
    """Capture decides once per environ shape which keys it carries; a shape it does
    not remember (too many, too large) is decided afresh, with the same outcome."""
    if not remember:
        monkeypatch.setattr("flask_celery_request.settings._REMEMBERED_PLANS", 0)
    app = make_app()
    settings = ContextSettings.from_config(app.config)
    requests = [
        {"headers": {"Accept": "a", "X-One": "1"}},
        {"headers": {"Accept": "b", "X-One": "2"}},  # same shape, other values
        {"headers": {"Accept": "c", "Cookie": "s=1", "X-Two": "t", "Referer": "https://r/?token=x&q=1"}},
        {"headers": {"Accept": "d"}, "environ_base": {"REMOTE_PORT": 5000, "HTTP_X_NONE": None}},
        {"headers": {"Accept": "e", "X-" + "Long" * 100: "5"}},  # a name too long to remember
    ]
    for index, options in enumerate(requests * 2):  # the second time round, every shape is known
        with app.test_request_context(f"/shape/{index}?n={index}&password=p", **options):
            carried = capture_request(request, settings, None)["e"]
            expected = {key: str(value) for key, value in request.environ.items() if value is not None and (
                key in CARRIED_ENVIRON_KEYS or key.startswith("HTTP_") and key not in ("HTTP_COOKIE",))}
            expected["QUERY_STRING"] = f"n={index}"
            if "HTTP_REFERER" in expected:
                expected["HTTP_REFERER"] = "https://r/?q=1"
            assert carried == expected
            assert list(carried) == [key for key in request.environ if key in expected]
