"""The task class and CeleryWithContext: where the context is sent, and where a task runs."""
from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery
from flask import Flask, current_app, g, has_app_context, has_request_context, request, url_for

from conftest import Published, describe_request, make_app, sealer_of
from flask_celery_request import (CONTEXT_HEADER, CeleryWithContext, ContextRefused, ContextTask,
                                  current_context)


def where() -> dict[str, Any]:
    """Which Flask context a task body runs in."""
    return {
        "app": has_app_context(),
        "request": has_request_context(),
        "path": request.path if has_request_context() else None,
    }


# --- in a live request ---------------------------------------------------------------------


def test_apply_inside_a_live_request_runs_in_that_request(app: Flask, celery: CeleryWithContext) -> None:
    @celery.task
    def same_request() -> tuple[Any, Any]:
        return request._get_current_object(), g._get_current_object()

    with app.test_request_context("/live"):
        outer = request._get_current_object(), g._get_current_object()
        assert same_request.apply().get() == outer


def test_eager_delay_inside_a_live_request_runs_in_that_request(app: Flask) -> None:
    app.config["CELERY"] = {**app.config["CELERY"], "task_always_eager": True}
    celery = CeleryWithContext(app)

    @celery.task
    def same_request() -> Any:
        return request._get_current_object()

    with app.test_request_context("/eager"):
        assert same_request.delay().get() is request._get_current_object()


def test_called_directly_inside_a_request(app: Flask, celery: CeleryWithContext) -> None:
    @celery.task
    def path() -> str:
        return request.path

    with app.test_request_context("/direct"):
        assert path() == "/direct"


def test_a_request_is_sealed_once_for_many_tasks(app: Flask, celery: CeleryWithContext,
                                                 published: Published) -> None:
    """Capture and sealing cost once per request: every task carries the same token."""
    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/many"):
        for _ in range(3):
            noop.apply_async()
        noop.delay()
        noop.s().apply_async()
        assert current_context() == published.tokens[0]
    with app.test_request_context("/other"):
        noop.delay()
    tokens = published.tokens
    assert len(tokens) == 6 and all(tokens)
    assert len(set(tokens[:5])) == 1
    assert tokens[5] != tokens[0]
    assert sealer_of(app).open(tokens[0])["e"]["PATH_INFO"] == "/many"


def test_explicit_header_wins(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    """An outbox re-sending a recorded context keeps that one, not the live request's."""
    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/live"):
        noop.apply_async(headers={CONTEXT_HEADER: "fcr1.recorded", "x-other": "1"})
        noop.apply_async(headers={"x-other": "2"})
    assert published.tokens[0] == "fcr1.recorded"
    assert published.messages[0][1]["x-other"] == "1"
    assert published.tokens[1] not in (None, "fcr1.recorded")
    assert published.messages[1][1]["x-other"] == "2"


def test_header_replayed_by_apply_outside_the_request(app: Flask, celery: CeleryWithContext,
                                                      published: Published) -> None:
    """What a worker does with the header, in-process: the task runs in the sender's request."""
    @celery.task
    def seen() -> dict[str, Any]:
        return describe_request()

    with app.test_request_context("/send", base_url="https://example.org/app", query_string="q=1",
                                  headers={"X-Note": "n"}, environ_base={"REMOTE_ADDR": "192.0.2.1"}):
        expected = describe_request()
        seen.apply_async()
    assert seen.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == expected


# --- outside a request ---------------------------------------------------------------------


def test_outside_any_request_a_task_runs_in_an_app_context(app: Flask, celery: CeleryWithContext,
                                                           published: Published) -> None:
    app.config["SERVER_NAME"] = "jobs.example.org"
    app.add_url_rule("/report", "report", lambda: "")

    @celery.task
    def body() -> dict[str, Any]:
        return {**where(), "app_is": current_app._get_current_object() is app,
                "url": url_for("report", _external=True)}

    body.apply_async()
    assert published.tokens == [None]
    assert body.apply().get() == {"app": True, "request": False, "path": None, "app_is": True,
                                  "url": "http://jobs.example.org/report"}
    assert body() == body.apply().get()  # called directly, too
    assert not has_app_context()


def test_task_inside_a_plain_app_context_runs_in_an_app_context(app: Flask, celery: CeleryWithContext) -> None:
    """A CLI command applying a task: the task gets an app context of the same app."""
    @celery.task
    def body() -> tuple[bool, bool, bool]:
        g.written_by_task = True
        return has_app_context(), has_request_context(), current_app._get_current_object() is app

    with app.app_context():
        g.outer = 1
        assert body.apply().get() == (True, False, True)
        assert g.outer == 1


def test_task_sent_from_a_replayed_task_inherits_the_context(app: Flask, celery: CeleryWithContext,
                                                             published: Published) -> None:
    @celery.task
    def child() -> None:
        pass

    @celery.task
    def parent() -> str | None:
        child.delay()
        return current_context()

    with app.test_request_context("/origin"):
        parent.apply_async()
    token = published.tokens[0]
    assert parent.apply(headers={CONTEXT_HEADER: token}).get() == token
    assert published.tokens == [token, token]  # unchanged: same time of sealing, same request


def test_task_sent_from_an_app_context_task_carries_nothing(app: Flask, celery: CeleryWithContext,
                                                            published: Published) -> None:
    @celery.task
    def child() -> None:
        pass

    @celery.task
    def parent() -> None:
        child.delay()

    parent.apply()
    assert published.tokens == [None]


def test_current_context_outside_everything_is_none(app: Flask, celery: CeleryWithContext) -> None:
    assert current_context() is None
    with app.app_context():
        assert current_context() is None


def test_retry_keeps_the_context(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    attempts: list[tuple[int, str]] = []

    @celery.task(bind=True, max_retries=2)
    def flaky(self) -> str:
        attempts.append((self.request.retries, request.path))
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return request.path

    with app.test_request_context("/flaky"):
        flaky.apply_async()
    assert flaky.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == "/flaky"
    assert attempts == [(0, "/flaky"), (1, "/flaky"), (2, "/flaky")]


def test_signature_from_request_keeps_the_header(app: Flask, celery: CeleryWithContext,
                                                 published: Published) -> None:
    """retry() and Celery 5.7's worker-lost re-send build the new message there."""
    @celery.task(bind=True)
    def resend(self) -> dict[str, Any]:
        return self.signature_from_request().options["headers"]

    with app.test_request_context("/resend"):
        resend.apply_async()
    token = published.tokens[0]
    assert resend.apply(headers={CONTEXT_HEADER: token, "x-kept": "1"}).get() == {
        CONTEXT_HEADER: token, "x-kept": "1"}


def test_signature_from_a_request_of_another_task(app: Flask, celery: CeleryWithContext) -> None:
    """The worker's parent passes the lost task's request, outside any Flask context."""
    from celery.app.task import Context

    @celery.task
    def lost() -> None:
        pass

    request_of_lost = Context({"id": "lost-1", "args": [], "kwargs": {}, "headers": {CONTEXT_HEADER: "fcr1.x"},
                               "delivery_info": {}})
    signature = lost.signature_from_request(request_of_lost, countdown=0)
    assert signature.options["headers"][CONTEXT_HEADER] == "fcr1.x"
    attribute_style = Context({"id": "lost-2", "args": [], "kwargs": {}, CONTEXT_HEADER: "fcr1.y",
                               "delivery_info": {}})
    assert lost.signature_from_request(attribute_style).options["headers"][CONTEXT_HEADER] == "fcr1.y"


def test_refused_context_fails_before_the_body_and_is_logged(app: Flask, celery: CeleryWithContext,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    ran: list[bool] = []

    @celery.task
    def body() -> None:
        ran.append(True)

    with caplog.at_level(logging.ERROR, "flask_celery_request"):
        result = body.apply(headers={CONTEXT_HEADER: "fcr1.AAAA*"})
    assert isinstance(result.result, ContextRefused)
    assert "not base64" in str(result.result)
    assert ran == []
    assert any("Refusing to run task" in record.getMessage() and "not base64" in record.getMessage()
               for record in caplog.records)


def test_context_of_another_app_with_the_same_secret_opens() -> None:
    """The web app and the worker are two processes, two app objects, one secret."""
    web, worker = make_app(), make_app()
    CeleryWithContext(web)
    worker_celery = CeleryWithContext(worker)

    @worker_celery.task
    def path() -> str:
        return request.path

    with web.test_request_context("/from-web"):
        token = current_context()
    assert path.apply(headers={CONTEXT_HEADER: token}).get() == "/from-web"


def test_rotated_secret_still_opens_contexts_of_the_old_one() -> None:
    old = make_app(SECRET_KEY="old-secret")
    new = make_app(SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["older-secret", "old-secret"])
    CeleryWithContext(old)
    celery = CeleryWithContext(new)

    @celery.task
    def path() -> str:
        return request.path

    with old.test_request_context("/before-rotation"):
        token = current_context()
    assert path.apply(headers={CONTEXT_HEADER: token}).get() == "/before-rotation"
    with new.test_request_context("/after-rotation"):
        fresh = current_context()
    assert path.apply(headers={CONTEXT_HEADER: fresh}).get() == "/after-rotation"
    with pytest.raises(ContextRefused, match="another secret"):
        sealer_of(old).open(fresh)  # sealed with the new key, not a fallback


# --- CeleryWithContext ---------------------------------------------------------------------


CELERY_SETTINGS = {"broker_url": "memory://configured", "result_backend": "cache+memory://",
                   "task_default_queue": "configured-queue"}


def test_celery_with_app_reads_its_config() -> None:
    app = make_app(CELERY=CELERY_SETTINGS)
    celery = CeleryWithContext(app)
    assert isinstance(celery, Celery)
    assert celery.conf.broker_url == "memory://configured"
    assert celery.conf.task_default_queue == "configured-queue"
    assert celery.main == app.import_name
    assert app.extensions["celery"] is celery
    assert celery.flask_app is app
    assert celery.Task is not None and issubclass(celery.Task, ContextTask)


def test_init_app_later_reads_its_config() -> None:
    celery = CeleryWithContext(main="later")
    assert celery.flask_app is None
    app = make_app(CELERY=CELERY_SETTINGS)
    celery.init_app(app)
    assert celery.conf.task_default_queue == "configured-queue"
    assert celery.main == "later"
    assert app.extensions["celery"] is celery and celery.flask_app is app

    @celery.task
    def body() -> bool:
        return current_app._get_current_object() is app

    assert body.apply().get() is True


def test_celery_keyword_arguments_are_celerys() -> None:
    celery = CeleryWithContext(make_app(CELERY={}), broker="memory://kw")
    assert celery.conf.broker_url == "memory://kw"


def test_init_app_without_secret_key_is_a_clear_error() -> None:
    app = make_app(SECRET_KEY=None)
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        CeleryWithContext(app)
    celery = CeleryWithContext()
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        celery.init_app(app)
    assert celery.flask_app is None and "celery" not in app.extensions


def test_task_without_a_flask_app_is_a_clear_error() -> None:
    celery = CeleryWithContext()

    @celery.task
    def body() -> None:
        pass

    with pytest.raises(RuntimeError, match="init_app"):
        body.apply().get()


def test_latest_app_bound_runs_tasks_without_context() -> None:
    first, second = make_app(), make_app()
    celery = CeleryWithContext(first)
    celery.init_app(second)

    @celery.task
    def body() -> bool:
        return current_app._get_current_object() is second

    assert body.apply().get() is True


def test_bad_context_settings_fail_at_init_app() -> None:
    with pytest.raises(ValueError, match="CELERY_CONTEXT_MAX_BYTES"):
        CeleryWithContext(make_app(CELERY_CONTEXT_MAX_BYTES=10))
