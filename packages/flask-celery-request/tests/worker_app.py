"""The bare Flask app a real worker runs in test_worker.py (``celery -A worker_app.celery``).

Configured from the environment the ``worker`` fixture sets (the test process imports it
too, with the same values, to send): FCR_TEST_BROKER_URL, FCR_TEST_RESULT_BACKEND,
FCR_TEST_REDIS_SOCKET, FCR_TEST_SECRET_KEY. Tasks return what they saw of the request,
or, for the confidentiality test, only a digest of it: results live in Redis too.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from typing import Any

import celery as celery_package
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import get_task_logger
from flask import Flask, after_this_request, g, request, session, url_for
from flask_babel import Babel, get_locale, get_timezone
from flask_login import LoginManager, UserMixin, current_user

from flask_celery_request import CeleryWithContext, RequestIdFilter, current_request_id

CELERY_5_7 = tuple(celery_package.VERSION[:2]) >= (5, 7)

flask_app = Flask(__name__)
flask_app.config.update(
    SECRET_KEY=os.environ.get("FCR_TEST_SECRET_KEY", "worker-app-secret"),
    CELERY={
        "broker_url": os.environ.get("FCR_TEST_BROKER_URL", "memory://"),
        "result_backend": os.environ.get("FCR_TEST_RESULT_BACKEND", "cache+memory://"),
        "result_extended": True,  # results store name, args and kwargs: none holds the request
        "task_default_queue": "fcr-test",
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # The worker's lines name the click they belong to (RequestIdFilter, below).
        "worker_log_format": "[%(levelname)s/%(processName)s] [%(request_id)s] %(message)s",
        "worker_task_log_format": "[%(levelname)s/%(processName)s] [%(request_id)s] "
                                  "%(task_name)s[%(task_id)s]: %(message)s",
        **({"task_retry_on_worker_lost": True} if CELERY_5_7 else {}),
    },
    CELERY_CONTEXT_G_KEYS=["tenant"],
)
celery = CeleryWithContext(flask_app)
login_manager = LoginManager(flask_app)
# The language and zone come from the session, which never travels: only the carried
# values can bring them to the worker.
Babel(flask_app, locale_selector=lambda: session.get("lang"), timezone_selector=lambda: session.get("tz"))


@after_setup_logger.connect
@after_setup_task_logger.connect
def give_handlers_request_ids(logger=None, **_kwargs) -> None:
    for handler in logger.handlers:
        handler.addFilter(RequestIdFilter())


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return User(user_id) if user_id.startswith("user-") else None


@flask_app.post("/shop/<path:item>")
def submit(item: str) -> str:
    return ""


@flask_app.after_request
def record_hook(response):
    """Records in Redis, for the request that asks (X-Hook-Key), that the app's hook ran."""
    key = request.headers.get("X-Hook-Key")
    if key:
        _redis().rpush(key, f"app-hook:{response.status_code}:{request.path}")
    return response


def describe() -> dict[str, Any]:
    """What a task sees of its request, JSON-able, byte-exact where bytes matter."""
    form = [list(item) for item in request.form.items(multi=True)]
    data = request.get_data()
    return {
        "method": request.method,
        "url": request.url,
        "base_url": request.base_url,
        "url_root": request.url_root,
        "script_root": request.script_root,
        "path": request.path,
        "query_string": request.query_string.decode("latin-1"),
        "args": [list(item) for item in request.args.items(multi=True)],
        "headers": [list(item) for item in request.headers.items()],
        "form": form,
        "remote_addr": request.remote_addr,
        "remote_port": str(request.environ.get("REMOTE_PORT")),
        "data": base64.b64encode(data).decode("ascii"),
        "json": request.get_json(silent=True) if request.is_json else None,
        "external_url": url_for("submit", item="x", _external=True),
        "user": current_user.get_id() if current_user.is_authenticated else None,
    }


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@celery.task
def snapshot() -> dict[str, Any]:
    """The request as the task sees it."""
    seen = describe()
    seen["pid"] = os.getpid()
    return seen


@celery.task
def snapshot_digest() -> str:
    """Only a digest: the confidentiality test must not find the request in the results."""
    return digest(describe())


@celery.task
def path_seen(*_: Any) -> str | None:
    """The path of the request, or None without one (for chains, groups and chords)."""
    from flask import has_request_context

    return request.path if has_request_context() else None


@celery.task
def collect(results: list[Any]) -> dict[str, Any]:
    """A chord body: the header's results, and its own request."""
    return {"header": results, "path": path_seen()}


@celery.task
def carried() -> dict[str, Any]:
    """The values carried besides the request, as the task sees them."""
    return {
        "request_id": current_request_id(),
        "locale": str(get_locale()),
        "timezone": get_timezone().zone,
        "tenant": g.get("tenant"),
        "traceparent": request.headers.get("traceparent"),
    }


@celery.task
def logged() -> str:
    """Writes one line of its own to the worker's log."""
    get_task_logger(__name__).info("a line of the task's own")
    return "logged"


@celery.task
def carried_child() -> str:
    """Sends :func:`carried` from inside a task: it inherits the values too."""
    return carried.delay().id


@celery.task
def send_child() -> str:
    """A task sent from inside a task: it inherits this task's context."""
    return snapshot.delay().id


@celery.task(bind=True, max_retries=3, default_retry_delay=0)
def retry_once(self) -> dict[str, Any]:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return {"retries": self.request.retries, **describe()}


@celery.task(bind=True, max_retries=3, default_retry_delay=0)
def killed_once(self) -> dict[str, Any]:
    """SIGKILLs its own pool process on the first attempt (Celery 5.7's worker-lost retry)."""
    if self.request.retries == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"retries": self.request.retries, "pid": os.getpid(), **describe()}


@celery.task
def uses_after_this_request() -> str:
    """Records its own run, then after_this_request's, in the list X-Hook-Key names."""
    key = request.headers["X-Hook-Key"]
    _redis().rpush(key, "task")

    @after_this_request
    def note(response):
        _redis().rpush(key, f"after-this-request:{request.path}")
        return response

    return request.path


def _redis():
    import redis

    return redis.Redis(unix_socket_path=os.environ["FCR_TEST_REDIS_SOCKET"])


@celery.task(bind=True, acks_late=True)
def held(self, key: str) -> str:
    """Runs (unacknowledged) until the test sets ``key``: its message sits in the unacked
    hash meanwhile. Polls with a deadline; returns only a digest."""
    client = _redis()
    client.set(f"{key}:started", self.request.id)
    deadline = time.monotonic() + 30
    while not client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)
    return digest(describe())
