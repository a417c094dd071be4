"""One id per click: on every response, on the web process's log lines, and on the worker's
lines for every task the click sent (an export, the welcome email's outbox re-send)."""
from __future__ import annotations

import io
import logging
import re

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.logs import WEB_LOG_FORMAT, configure_process_logging, with_request_id
from app.models import EmailDelivery, Task, TaskState, User
from tests.conftest import AuthActions
from tests.support.services import wait_until

NEW_ID = re.compile(r"[0-9a-f]{32}")


def opened_context(app, token: str) -> dict:
    return app.extensions["flask_celery_request"].sealer.open(token)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/auth/login", 200),
    ("get", "/", 302),
    ("get", "/no/such/page", 404),
    ("get", "/language", 405),
    ("get", "/tasks/nope", 401),
    ("post", "/auth/login", 400),  # no CSRF token
    ("get", "/static/style.css", 200),
    ("get", "/healthz", None),
])
def test_every_response_carries_its_id(client, method: str, path: str, status: int | None) -> None:
    response = getattr(client, method)(path, headers={"Accept": "application/json"} if "tasks" in path else {})
    if status is not None:
        assert response.status_code == status
    assert NEW_ID.fullmatch(response.headers["X-Request-Id"])


def test_each_click_gets_its_own_id(client) -> None:
    ids = {client.get("/auth/login").headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3


def test_a_well_formed_incoming_id_is_kept_and_a_bad_one_replaced(client) -> None:
    kept = client.get("/auth/login", headers={"X-Request-Id": "lb-7f3a-2c"})
    assert kept.headers["X-Request-Id"] == "lb-7f3a-2c"
    replaced = client.get("/auth/login", headers={"X-Request-Id": "forged id; level=ERROR"})
    assert NEW_ID.fullmatch(replaced.headers["X-Request-Id"])


def test_web_log_lines_carry_the_id_of_their_request(make_app) -> None:
    app = make_app()
    stream = io.StringIO()
    handler = with_request_id(logging.StreamHandler(stream), WEB_LOG_FORMAT)
    app.logger.addHandler(handler)

    @app.get("/test-only/boom")
    def boom():
        raise RuntimeError("boom")

    try:
        response = app.test_client().get("/test-only/boom", headers={"X-Request-Id": "click-500"})
    finally:
        app.logger.removeHandler(handler)
    assert response.status_code == 500 and response.headers["X-Request-Id"] == "click-500"
    assert "ERROR [click-500] app: Unhandled error on GET /test-only/boom" in stream.getvalue()


def test_process_logging_writes_the_id_on_root_handlers(monkeypatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_process_logging()
    (handler,) = root.handlers
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert handler.filter(record) and record.request_id == "-"
    assert handler.format(record).endswith("INFO [-] x: hello")
    configure_process_logging()  # once only
    assert len(root.handlers) == 1


def test_the_outbox_keeps_the_click_id_for_its_re_sends(app) -> None:
    """A welcome email re-sent by beat hours later carries the registration's id."""
    auth = AuthActions(app.test_client())
    response = auth.register("ida", headers={"X-Request-Id": "click-register"})
    assert response.status_code == 302 and response.headers["X-Request-Id"] == "click-register"
    with app.app_context():
        token = db.session.scalar(sa.select(EmailDelivery.request_context))
    assert opened_context(app, token)["v"]["request_id"] == "click-register"


@pytest.mark.worker
def test_the_export_id_is_on_its_response_and_the_workers_lines(live_app, live_stack, mail_sink) -> None:
    auth = AuthActions(live_app.test_client())
    auth.signup("rid")
    assert auth.post_form("/index", {"post": "a post to export"}).status_code == 302
    log_path = live_stack.worker.log_path
    already = log_path.stat().st_size

    response = auth.post_form("/export_posts", page="/user/rid", headers={"X-Request-Id": "click-export-1"})
    assert response.status_code == 302 and response.headers["X-Request-Id"] == "click-export-1"
    with live_app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "rid"))
        task = db.session.scalar(user.tasks.select().where(Task.name == "export_posts"))

    def finished() -> bool:
        with live_app.app_context():
            return db.session.get(Task, task.id).state in TaskState.FINISHED

    wait_until(finished, 60, message="the export to finish")

    def lines_of_the_export() -> list[str] | None:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(already)
            lines = [line for line in log if task.id in line]
        return lines if any("succeeded" in line for line in lines) else None

    lines = wait_until(lines_of_the_export, 30, message="the worker's lines about the export")
    assert any(line.rstrip().endswith("received") for line in lines)
    assert all("[click-export-1]" in line for line in lines), lines
