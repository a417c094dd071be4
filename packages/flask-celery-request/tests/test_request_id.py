"""One id per click: read or made in the request, carried to its tasks, given to log records."""
from __future__ import annotations

import logging
import re

import pytest
from celery.signals import task_success
from flask import Flask

from conftest import Published, make_app, sealer_of
from flask_celery_request import CONTEXT_HEADER, CeleryWithContext, RequestIdFilter, current_request_id

NEW_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("incoming", [
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "Root=1-67891233-abcdef012345678912345678",
    "a+b/c=d_e.f:g@h",
    "x" * 200,
])
def test_a_well_formed_incoming_id_is_kept(app: Flask, celery: CeleryWithContext, incoming: str) -> None:
    with app.test_request_context("/", headers={"X-Request-Id": incoming}):
        assert current_request_id() == incoming


@pytest.mark.parametrize("incoming", [
    "",
    "has space",
    "line\nbreak",
    "x" * 201,
    "quote\"d",
    "ünïcode",
])
def test_a_malformed_incoming_id_is_replaced(app: Flask, celery: CeleryWithContext, incoming: str) -> None:
    # In the environ, as a server hands it over (werkzeug's test client refuses a newline).
    with app.test_request_context("/", environ_base={"HTTP_X_REQUEST_ID": incoming}):
        assert NEW_ID.fullmatch(current_request_id())


def test_one_id_per_request(app: Flask, celery: CeleryWithContext) -> None:
    with app.test_request_context("/one"):
        first = current_request_id()
        assert current_request_id() == first and NEW_ID.fullmatch(first)
    with app.test_request_context("/two"):
        assert current_request_id() != first


def test_the_header_is_a_setting() -> None:
    app = make_app(CELERY_CONTEXT_REQUEST_ID_HEADER="X-Correlation-Id")
    CeleryWithContext(app)
    with app.test_request_context("/", headers={"X-Correlation-Id": "corr-1", "X-Request-Id": "req-1"}):
        assert current_request_id() == "corr-1"


def test_an_empty_header_setting_never_trusts_the_client() -> None:
    app = make_app(CELERY_CONTEXT_REQUEST_ID_HEADER="")
    CeleryWithContext(app)
    with app.test_request_context("/", headers={"X-Request-Id": "chosen-by-the-client"}):
        assert NEW_ID.fullmatch(current_request_id())


def test_outside_a_request_and_a_task_there_is_none(app: Flask, celery: CeleryWithContext) -> None:
    assert current_request_id() is None
    with app.app_context():
        assert current_request_id() is None


def test_the_id_is_carried_to_the_task(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    @celery.task
    def seen() -> str | None:
        return current_request_id()

    with app.test_request_context("/", headers={"X-Request-Id": "click-42"}):
        seen.delay()
    token = published.tokens[0]
    assert sealer_of(app).open(token)["v"]["request_id"] == "click-42"
    assert seen.apply(headers={CONTEXT_HEADER: token}).get() == "click-42"


def test_a_made_id_is_carried_as_made(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    """A request without an incoming id: the task gets the id the request made, not a new one."""
    @celery.task
    def seen() -> str | None:
        return current_request_id()

    with app.test_request_context("/"):
        made = current_request_id()
        seen.delay()
    assert seen.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == made


def test_the_id_outlives_the_replayed_request_for_the_workers_own_lines(
        app: Flask, celery: CeleryWithContext, published: Published) -> None:
    """Celery logs "succeeded" after the body, outside the replayed request: still the id."""
    @celery.task
    def body() -> None:
        pass

    seen = []

    def on_success(sender=None, **_kwargs) -> None:
        seen.append(current_request_id())

    with app.test_request_context("/", headers={"X-Request-Id": "click-7"}):
        body.delay()
    task_success.connect(on_success, sender=body, weak=False)
    try:
        body.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get()
    finally:
        task_success.disconnect(on_success, sender=body)
    assert seen == ["click-7"]


def record(message: str = "m", **extra) -> logging.LogRecord:
    made = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_the_filter_gives_every_record_the_id(app: Flask, celery: CeleryWithContext) -> None:
    log_filter = RequestIdFilter()
    outside = record()
    assert log_filter.filter(outside) and outside.request_id == "-"
    with app.test_request_context("/", headers={"X-Request-Id": "click-9"}):
        inside = record()
        assert log_filter.filter(inside) and inside.request_id == "click-9"
        given = record(request_id="given")
        log_filter.filter(given)
        assert given.request_id == "given"


def test_the_filter_formats_through_a_handler(app: Flask, celery: CeleryWithContext) -> None:
    lines = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("[%(request_id)s] %(message)s"))
    logger = logging.getLogger("fcr-test-request-id")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before")
        with app.test_request_context("/", headers={"X-Request-Id": "click-3"}):
            logging.getLogger("fcr-test-request-id.child").warning("during")
    finally:
        logger.removeHandler(handler)
    assert lines == ["[-] before", "[click-3] during"]
