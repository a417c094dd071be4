"""The Celery app and its Task class: where capture, transport and replay are wired in."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import Celery, Task, current_task
from celery.signals import before_task_publish
from celery.worker.request import Request as WorkerRequest
from flask import Flask, current_app, has_app_context, has_request_context, request

from . import compat
from .capture import capture_request, shrink_to_fit
from .replay import ENVIRON_TOKEN_KEY, replay_request
from .carry import DEFAULT_VALUE_MAX_BYTES, Carrier, Carriers
from .request_id import TASK_REQUEST_ATTR, note_received
from .settings import EXTENSION_KEY, ContextSettings
from .standard import standard_carriers
from .transport import CONTEXT_HEADER, ContextRefused, Sealer

logger = logging.getLogger("flask_celery_request")

#: Cached in the environ of a request whose context does not fit: do not try again.
_NO_CONTEXT = ""
#: In a live request's environ, beside its token: the captured request, and the values
#: the token carries (a replayed request has the token alone, and passes it on as is).
_CAPTURED_KEY = "flask_celery_request.captured"
_SEALED_VALUES_KEY = "flask_celery_request.values"


@dataclass(frozen=True)
class _AppState:
    """What one Flask app needs to seal and open contexts, built once by ``init_app``."""

    settings: ContextSettings
    sealer: Sealer
    carriers: Carriers

    @classmethod
    def of(cls, app: Flask) -> _AppState:
        state = app.extensions.get(EXTENSION_KEY)
        if state is None:
            state = app.extensions[EXTENSION_KEY] = cls.build(app)
        return state

    @classmethod
    def build(cls, app: Flask, carriers: Carriers | None = None) -> _AppState:
        if not app.secret_key:
            raise RuntimeError("Flask-Celery-Request encrypts request contexts with a key derived "
                               "from SECRET_KEY; set it")
        settings = ContextSettings.from_config(app.config)
        keys = [app.secret_key, *reversed(app.config.get("SECRET_KEY_FALLBACKS") or [])]
        return cls(settings, Sealer(keys, settings), carriers if carriers is not None else _standard())


def _standard() -> Carriers:
    carriers = Carriers()
    for carrier in standard_carriers():
        carriers.add(carrier)
    return carriers


def seal_current_request() -> str | None:
    """Capture the live request and the values carried with it, and seal them: a value
    for :data:`CONTEXT_HEADER`, or None if it does not fit in ``CELERY_CONTEXT_MAX_BYTES``
    even without its body and headers (logged)."""
    app, live, g = compat.live_request()
    state = _AppState.of(app)
    values = state.carriers.capture()
    return _seal(state, capture_request(live, state.settings, compat.sender_user_id(app, live, g)), values)


def _seal(state: _AppState, captured: dict[str, Any], values: dict[str, Any]) -> str | None:
    context = dict(captured)
    if values:
        context["v"] = values
    plaintext = shrink_to_fit(context, state.sealer.encode, state.settings.max_bytes)
    return None if plaintext is None else state.sealer.seal(plaintext)


def _seal_live(environ: dict[str, Any], token: str | None) -> str:
    """The token of the live request with the values carried now: the request is
    captured once, and sealed again only when a value changed since the last task."""
    app, live, g = compat.live_request()
    state = _AppState.of(app)
    values = state.carriers.capture()
    if token is not None and environ[_SEALED_VALUES_KEY] == values:
        return token
    captured = environ.get(_CAPTURED_KEY)
    if captured is None:
        captured = environ[_CAPTURED_KEY] = capture_request(live, state.settings,
                                                            compat.sender_user_id(app, live, g))
    token = environ[ENVIRON_TOKEN_KEY] = _seal(state, captured, values) or _NO_CONTEXT
    environ[_SEALED_VALUES_KEY] = values
    return token


def current_context() -> str | None:
    """The sealed context a task sent now would carry: the live request's with the
    values carried now (its request captured once, at its first task), the replayed
    request's or the running task's as it came; None outside all three."""
    if has_request_context():
        environ = request.environ
        token = environ.get(ENVIRON_TOKEN_KEY)
        if token is None or _SEALED_VALUES_KEY in environ:
            token = _seal_live(environ, token)
        return token or None
    running = current_task._get_current_object()
    return None if running is None else header_from(running.request)


def header_from(celery_request: Any) -> str | None:
    """Our header in a task's request, wherever this Celery version or a tool put it."""
    if celery_request is None:
        return None
    value = getattr(celery_request, CONTEXT_HEADER, None)
    if value is not None:
        return value
    headers = getattr(celery_request, "headers", None)
    if isinstance(headers, Mapping):
        value = headers.get(CONTEXT_HEADER)
        if value is None and isinstance(headers.get("headers"), Mapping):
            value = headers["headers"].get(CONTEXT_HEADER)
    return value


@before_task_publish.connect
def _carry_the_header_once(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Tracing integrations copy a message's custom headers into its nested ``headers``
    too (https://github.com/celery/celery/issues/4875; sentry-python does): our token,
    a kilobyte or more, would then travel twice. The worker reads the top-level one."""
    nested = headers.get("headers") if headers else None
    if isinstance(nested, dict) and CONTEXT_HEADER in nested \
            and nested[CONTEXT_HEADER] == headers.get(CONTEXT_HEADER):
        del nested[CONTEXT_HEADER]


def _with_context(headers: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if headers and CONTEXT_HEADER in headers:
        return headers  # given explicitly (an outbox re-sending a recorded context)
    token = current_context()
    if token is None:
        return headers
    return {**headers, CONTEXT_HEADER: token} if headers else {CONTEXT_HEADER: token}


def _carried_request_id(task: Task, token: str) -> str | None:
    app = getattr(task.app, "flask_app", None)
    if app is None:
        return None
    try:
        context = _AppState.of(app).sealer.open(token)
    except ContextRefused:
        return None  # the task itself says why, when it runs
    request_id = (context.get("v") or {}).get("request_id")
    return request_id if isinstance(request_id, str) else None


class ContextRequest(WorkerRequest):
    """The worker's request for a received message: notes the message's context, so
    that the line Celery logs on receiving it carries the request id too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        token = self.request_dict.get(CONTEXT_HEADER)
        opener = partial(_carried_request_id, self.task, token) if isinstance(token, str) else None
        note_received(self.id, opener)


class ContextTask(Task):
    """A task that carries the sending request to the worker and runs inside it."""

    Request = ContextRequest

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None,
                    link_error=None, shadow=None, **options):
        options["headers"] = _with_context(options.get("headers"))
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)

    def apply(self, args=None, kwargs=None, link=None, link_error=None, task_id=None,
              retries=None, throw=None, logfile=None, loglevel=None, headers=None, **options):
        return super().apply(args, kwargs, link, link_error, task_id, retries, throw,
                             logfile, loglevel, _with_context(headers), **options)

    def signature_from_request(self, request=None, args=None, kwargs=None, queue=None, **extra_options):
        """As Celery's, keeping the context: ``retry()`` and Celery 5.7's
        ``task_retry_on_worker_lost`` (the worker's parent re-sends the task, outside
        any request) build the new message here."""
        signature = super().signature_from_request(request, args, kwargs, queue, **extra_options)
        token = header_from(self.request if request is None else request)
        if token is not None:
            signature.options["headers"] = {**(signature.options.get("headers") or {}), CONTEXT_HEADER: token}
        return signature

    def __call__(self, *args, **kwargs):
        if has_request_context():
            # Called or applied inside a live (or replayed) request: run right there.
            return self._run(args, kwargs)
        app = self._flask_app()
        token = header_from(self.request)
        if token is None:
            with app.app_context():
                return self._run(args, kwargs)
        state = _AppState.of(app)
        try:
            context = state.sealer.open(token)
        except ContextRefused as exc:
            logger.error("Refusing to run task %s[%s]: %s", self.name, self.request.id, exc)
            raise
        values = context.get("v") or {}
        if "request_id" in values:
            # For the worker's own lines about this run (succeeded, failed, retry).
            setattr(self.request, TASK_REQUEST_ATTR, values["request_id"])
        with replay_request(app, context, token), state.carriers.restored(values, self.name):
            return self._run(args, kwargs)

    def _run(self, args, kwargs):
        if not self.request.called_directly:
            # The worker's tracer (or apply()) already pushed this task's request.
            return self.run(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def _flask_app(self) -> Flask:
        if has_app_context():
            return current_app._get_current_object()
        app = getattr(self.app, "flask_app", None)
        if app is None:
            raise RuntimeError("CeleryWithContext has no Flask app: call celery.init_app(app) "
                               "before running tasks")
        return app


class CeleryWithContext(Celery):
    """A Celery app whose tasks run inside the Flask request (or app) that sent them.

    ``CeleryWithContext(app=None, **celery_kwargs)``: the keyword arguments are
    Celery's (``main``, ``broker``, ...); :meth:`init_app` binds a Flask app.
    """

    task_cls = ContextTask

    def __init__(self, app: Flask | None = None, **celery_kwargs: Any) -> None:
        main = celery_kwargs.pop("main", None)
        if main is None and app is not None:
            main = app.import_name
        super().__init__(main, **celery_kwargs)
        self.flask_app: Flask | None = None
        #: What travels with the request besides it: the standard values, then the app's.
        self.carriers = _standard()
        if app is not None:
            self.init_app(app)

    def carry(self, name: str, capture: Callable[[], Any], restore: Callable[[Any], Any], *,
              required: bool = False, max_bytes: int = DEFAULT_VALUE_MAX_BYTES) -> Carrier:
        """Carry one more value with the request of every task sent.

        ``capture()`` runs in the sending request at each send and returns JSON (or None:
        nothing to carry); ``restore(value)`` runs in the worker's replayed request before
        the task body, and may return a context manager, held for the task's run.
        ``required=True`` fails a task whose carried request lacks the value
        (:class:`CarriedValueMissing`); a value above ``max_bytes`` of JSON, not JSON, or
        whose capture raises, stops the send with :class:`ContextCaptureError`.
        Tasks sent outside any request carry nothing, and restore nothing.
        """
        return self.carriers.add(Carrier(name, capture, restore, required=required, max_bytes=max_bytes))

    def init_app(self, app: Flask) -> None:
        """Bind ``app``: Celery settings from ``app.config["CELERY"]`` (lower-case Celery
        names), contexts sealed with its ``SECRET_KEY``. The latest app bound runs tasks
        that arrive without a Flask context."""
        state = _AppState.build(app, self.carriers)
        previous = (self.conf.broker_url, self.conf.result_backend) if self.flask_app is not None else None
        self.conf.update(app.config.get("CELERY") or {})
        if previous is not None and previous != (self.conf.broker_url, self.conf.result_backend):
            compat.forget_connections(self)
        self.flask_app = app
        app.extensions["celery"] = self
        app.extensions[EXTENSION_KEY] = state
