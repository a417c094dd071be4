"""Tasks the tests send to a real worker to see what the replayed request looks like.

The worker imports this module with ``--include tests.support.probe_tasks``. Its
after_request and teardown hooks append JSON lines to ``$PROBE_HOOK_LOG``.
"""
from __future__ import annotations

import json
import os
import time
from urllib.parse import unquote_plus

from celery import chord, group
from celery.signals import worker_process_init
from flask import g, has_request_context, render_template_string, request, url_for
from flask_login import current_user

from app.extensions import celery, db


def describe_current_request() -> dict | None:
    """Every request field CeleryWithContext promises to carry, as JSON."""
    if not has_request_context():
        return None
    is_form = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
    return {
        "method": request.method,
        "scheme": request.scheme,
        "host": request.host,
        "script_root": request.script_root,
        "path": request.path,
        "full_path": request.full_path,
        "url": request.url,
        "query_string": request.query_string.decode("latin-1"),
        "args": [list(pair) for pair in request.args.items(multi=True)],
        "headers": [list(pair) for pair in request.headers.items()],
        "form": [list(pair) for pair in request.form.items(multi=True)],
        "body": None if is_form else request.get_data().decode("latin-1"),
        "json": request.get_json(silent=True),
        "remote_addr": request.remote_addr,
        "endpoint": request.endpoint,
        "index_url": url_for("main.index", _external=True),
        "user_id": current_user.get_id() if current_user.is_authenticated else None,
    }


def describe_sending_request() -> dict:
    """The view's side, after it sent the task: :func:`describe_current_request` plus
    the raw body the carrier read (a urlencoded form the view had not parsed travels
    as its raw body, less its sensitive fields)."""
    described = describe_current_request()
    described["raw_body"] = request.get_data(cache=True).decode("latin-1")
    return described


def as_carried(live: dict, is_sensitive) -> dict:
    """A sending request's description as the worker should see it, but for scrubbing:
    a urlencoded body that lost fields has the Content-Length of what is left."""
    expected = {key: value for key, value in live.items() if key != "raw_body"}
    raw = live.get("raw_body")
    if raw and dict(live["headers"]).get("Content-Type") == "application/x-www-form-urlencoded":
        parts = raw.split("&")
        kept = [part for part in parts if not is_sensitive(unquote_plus(part.partition("=")[0]))]
        if len(kept) != len(parts):
            length = str(len("&".join(kept)))
            expected["headers"] = [[name, length if name == "Content-Length" else value]
                                   for name, value in live["headers"]]
    return expected


@celery.task(bind=True)
def describe_request(self, *previous):
    """What the worker sees; ``previous`` takes a chain's earlier result."""
    return {
        "request": describe_current_request(),
        "task_args": list(self.request.args or []),
        "task_kwargs": dict(self.request.kwargs or {}),
        "previous": list(previous),
    }


@celery.task
def collect(results):
    """A chord body: the descriptions of its header, plus its own."""
    return {"header": results, "body": describe_current_request()}


@celery.task
def send_nested():
    """Send describe_request from inside a task; the test waits for it by id."""
    return describe_request.delay().id


@celery.task
def launch_group_from_task(size: int):
    return group(describe_request.s() for _ in range(size)).apply_async().id


@celery.task
def launch_chord_from_task(size: int):
    return chord((describe_request.s() for _ in range(size)), collect.s()).apply_async().id


@celery.task(bind=True, max_retries=3)
def retry_once(self):
    """Retry (passing headers=, as user code may), then describe the request."""
    if self.request.retries == 0:
        raise self.retry(countdown=0, headers={"probe_extra": "kept"})
    return {"request": describe_current_request(), "retries": self.request.retries}


@celery.task
def describe_to_file_when_released(out_path: str, release_path: str, timeout: float = 30.0):
    """Wait (its message unacknowledged, in the broker's unacked set) until ``release_path``
    exists, then write what the worker sees to ``out_path``, never to the result backend."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(release_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_path} never appeared")
        time.sleep(0.05)
    with open(out_path, "w") as out:
        json.dump(describe_current_request(), out)
    return "described"


@celery.task
def render_link():
    """Templates and url_for in a task, as in an email body."""
    return render_template_string("Visit {{ url_for('main.user', username='ann', _external=True) }}")


@celery.task
def returns(value):
    return value


@celery.task
def fails(message: str):
    g.probe_marker = message
    raise ValueError(message)


@celery.task
def fails_holding_a_write(username: str):
    """Flush a row (taking SQLite's write lock) and raise: teardown must roll it back."""
    from app.models import User

    db.session.add(User(username=username, email=f"{username}@example.com"))
    db.session.flush()
    raise RuntimeError("failed after a flush")


def _record(entry: dict) -> None:
    path = os.environ.get("PROBE_HOOK_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")


def install_hooks(app) -> None:
    """after_request and teardown hooks that log what they saw, and the probe route."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule("/probe/", "probe", lambda subpath: "", methods=methods, defaults={"subpath": ""})
    app.add_url_rule("/probe/<path:subpath>", "probe", methods=methods)

    @app.after_request
    def probe_after_request(response):
        _record({"hook": "after_request", "path": request.path, "status": response.status_code,
                 "task": celery.current_task.name if celery.current_task else None})
        response.headers["X-Probe"] = "1"
        return response

    @app.teardown_request
    def probe_teardown(exc):
        _record({"hook": "teardown_request", "path": request.path,
                 "error": None if exc is None else f"{type(exc).__name__}: {exc}",
                 "marker": g.get("probe_marker")})


@worker_process_init.connect
def _install_in_worker(**_kwargs) -> None:
    if os.environ.get("PROBE_HOOK_LOG") and celery.flask_app is not None:
        install_hooks(celery.flask_app)
