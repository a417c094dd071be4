"""The values every app carries: the W3C trace context, Flask-Babel's locale and time
zone, and the ``g`` attributes of ``CELERY_CONTEXT_G_KEYS``."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from flask import Flask, g, request, session
from flask_babel import Babel, format_datetime, get_locale, get_timezone

from conftest import Published, make_app, sealer_of
from flask_celery_request import CONTEXT_HEADER, CeleryWithContext, ContextCaptureError

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def send_and_open(app: Flask, celery: CeleryWithContext, published: Published, task: Any,
                  path: str = "/", **request_options: Any) -> tuple[dict[str, Any], str]:
    with app.test_request_context(path, **request_options):
        task.delay()
    token = published.tokens[-1]
    return sealer_of(app).open(token), token


# --- trace context -------------------------------------------------------------------------


def test_trace_context_is_carried(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    @celery.task
    def seen() -> Any:
        return request.headers.get("traceparent"), request.headers.get("tracestate")

    context, token = send_and_open(app, celery, published, seen,
                                   headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"})
    assert context["v"]["trace"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"}
    assert seen.apply(headers={CONTEXT_HEADER: token}).get() == (TRACEPARENT, "vendor=abc,other=1")


@pytest.mark.parametrize("traceparent", [
    "not a trace",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
])
def test_a_malformed_traceparent_is_not_carried_as_trace(app: Flask, celery: CeleryWithContext,
                                                         published: Published, traceparent: str) -> None:
    @celery.task
    def noop() -> None:
        pass

    context, _ = send_and_open(app, celery, published, noop, headers={"traceparent": traceparent})
    assert "trace" not in context.get("v", {})


def test_trace_context_survives_a_context_shrunk_to_fit(published: Published) -> None:
    """Headers are dropped to fit CELERY_CONTEXT_MAX_BYTES; the trace context stays."""
    app = make_app(CELERY_CONTEXT_MAX_BYTES=1024)
    celery = CeleryWithContext(app)

    @celery.task
    def seen() -> Any:
        return request.headers.get("traceparent"), request.headers.get("X-Big")

    context, token = send_and_open(app, celery, published, seen,
                                   headers={"traceparent": TRACEPARENT, "X-Big": "b" * 2000})
    assert context["dropped"] == "headers"
    assert seen.apply(headers={CONTEXT_HEADER: token}).get() == (TRACEPARENT, None)


def test_trace_context_is_not_a_plain_message_header(app: Flask, celery: CeleryWithContext,
                                                     published: Published) -> None:
    """Nothing of the request is readable in the broker: the trace travels sealed."""
    @celery.task
    def noop() -> None:
        pass

    send_and_open(app, celery, published, noop, headers={"traceparent": TRACEPARENT})
    headers = published.messages[-1][1]
    assert "traceparent" not in headers
    assert "4bf92f3577b34da6a3ce929d0e0e4736" not in repr(headers)


# --- Flask-Babel -----------------------------------------------------------------------------


@pytest.fixture
def babel_app() -> Flask:
    """The language and time zone come from the session, which is never carried."""
    app = make_app()
    Babel(app, locale_selector=lambda: session.get("lang"), timezone_selector=lambda: session.get("tz"))
    return app


def test_locale_and_timezone_as_they_were_at_send_time(babel_app: Flask, published: Published) -> None:
    celery = CeleryWithContext(babel_app)

    @celery.task
    def seen() -> Any:
        moment = datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc)
        return str(get_locale()), get_timezone().zone, format_datetime(moment, "yyyy-MM-dd HH:mm")

    with babel_app.test_request_context("/"):
        session["lang"], session["tz"] = "ru", "Asia/Shanghai"
        in_view = seen.apply().get()
        seen.delay()
    assert in_view == ("ru", "Asia/Shanghai", "2027-01-01 07:30")
    token = published.tokens[0]
    assert sealer_of(babel_app).open(token)["v"]["locale"] == "ru"
    assert seen.apply(headers={CONTEXT_HEADER: token}).get() == in_view


def test_without_a_choice_the_defaults_travel(babel_app: Flask, published: Published) -> None:
    celery = CeleryWithContext(babel_app)

    @celery.task
    def seen() -> Any:
        return str(get_locale()), get_timezone().zone

    with babel_app.test_request_context("/"):
        seen.delay()
    assert seen.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == ("en", "UTC")


def test_an_app_without_flask_babel_carries_no_locale(app: Flask, celery: CeleryWithContext,
                                                      published: Published) -> None:
    @celery.task
    def noop() -> None:
        pass

    context, _ = send_and_open(app, celery, published, noop)
    assert "locale" not in context.get("v", {}) and "timezone" not in context.get("v", {})


# --- g ---------------------------------------------------------------------------------------


def test_allow_listed_g_keys_travel(published: Published) -> None:
    app = make_app(CELERY_CONTEXT_G_KEYS=["tenant", "flags", "unset"])
    celery = CeleryWithContext(app)

    @celery.task
    def seen() -> Any:
        return {key: g.get(key, "missing") for key in ("tenant", "flags", "unset", "private")}

    with app.test_request_context("/"):
        g.tenant, g.flags, g.private = "acme", {"beta": True, "ids": [1, 2]}, "not listed"
        seen.delay()
    context = sealer_of(app).open(published.tokens[0])
    assert context["v"]["g"] == {"tenant": "acme", "flags": {"beta": True, "ids": [1, 2]}}
    assert seen.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == {
        "tenant": "acme", "flags": {"beta": True, "ids": [1, 2]}, "unset": "missing", "private": "missing"}


def test_g_keys_from_a_comma_separated_setting() -> None:
    from flask_celery_request.settings import ContextSettings

    assert ContextSettings.from_config({"CELERY_CONTEXT_G_KEYS": " a, b ,,c"}).g_keys == ("a", "b", "c")


@pytest.mark.parametrize("keys", [["not an identifier"], ["a-b"], [1]])
def test_g_keys_must_be_identifiers(keys: list[Any]) -> None:
    with pytest.raises(ValueError, match="CELERY_CONTEXT_G_KEYS must name g attributes"):
        CeleryWithContext(make_app(CELERY_CONTEXT_G_KEYS=keys))


def test_a_g_value_that_is_not_json_stops_the_send(published: Published) -> None:
    app = make_app(CELERY_CONTEXT_G_KEYS=["connection"])
    celery = CeleryWithContext(app)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/"), pytest.raises(ContextCaptureError, match="'g' is not JSON"):
        g.connection = object()
        noop.delay()
    assert published.messages == []
