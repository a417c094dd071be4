"""One id per click: the request id, shared by the request and every task it sends.

The id is the incoming ``X-Request-Id`` (``CELERY_CONTEXT_REQUEST_ID_HEADER``) when it
is well formed, so a proxy's or a load balancer's id carries on; otherwise a new one.
It is carried sealed with the request, so a task, the tasks it sends, its retries and
an outbox's later re-sends all log the id of the click that started them.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

from celery import current_task
from flask import current_app, has_request_context, request

from .settings import DEFAULT_REQUEST_ID_HEADER, EXTENSION_KEY, environ_header_key

#: Where a request (live or replayed) keeps its id, in its WSGI environ.
REQUEST_ID_KEY = "flask_celery_request.request_id"
#: Where a running task keeps its carried request's id, on Celery's task request, so
#: the worker's own lines about the task (succeeded, failed, retry) carry it too.
TASK_REQUEST_ATTR = "flask_celery_request_id"

#: What an incoming id may be: the characters request ids use (UUIDs, Heroku's and
#: AWS's ids, base64), nothing that could forge or break a log line.
WELL_FORMED = re.compile(r"[A-Za-z0-9+/=._:@-]{1,200}")
_DEFAULT_KEY = environ_header_key(DEFAULT_REQUEST_ID_HEADER)


def is_well_formed(value: object) -> bool:
    return isinstance(value, str) and WELL_FORMED.fullmatch(value) is not None


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` looks, at a tenth of its cost."""
    return os.urandom(16).hex()


def current_request_id() -> str | None:
    """The id of the current click: the live or replayed request's (made on first
    use), else the running task's carried one; None outside both."""
    if has_request_context():
        environ = request.environ
        request_id = environ.get(REQUEST_ID_KEY)
        if request_id is None:
            state = current_app.extensions.get(EXTENSION_KEY)
            key = state.settings.request_id_key if state is not None else _DEFAULT_KEY
            incoming = environ.get(key) if key else None
            request_id = incoming if is_well_formed(incoming) else new_request_id()
            environ[REQUEST_ID_KEY] = request_id
        return request_id
    task = current_task._get_current_object()
    return None if task is None else getattr(task.request, TASK_REQUEST_ATTR, None)


def restore_request_id(value: str) -> None:
    """In the replayed request: the sender's id becomes this request's."""
    request.environ[REQUEST_ID_KEY] = value


class _Received:
    """The message a worker's main process received last, and how to open its id.

    Celery logs "Received task" right after building the message's request, outside
    any task: that line finds the id here, decrypted only if a filter asks for it.
    """

    def __init__(self, task_id: str, open_request_id: Callable[[], str | None]) -> None:
        self.task_id = task_id
        self._open = open_request_id
        self._opened = False
        self._request_id: str | None = None

    def request_id(self) -> str | None:
        if not self._opened:
            self._request_id, self._opened = self._open(), True
        return self._request_id


_received: _Received | None = None


def note_received(task_id: str, open_request_id: Callable[[], str | None] | None) -> None:
    global _received
    _received = None if open_request_id is None else _Received(task_id, open_request_id)


def _received_request_id(record: logging.LogRecord) -> str | None:
    """For Celery's "Received task" line (its record's ``data`` names the task id)."""
    received = _received
    data = record.__dict__.get("data")
    if received is None or not isinstance(data, dict) or data.get("id") != received.task_id:
        return None
    return received.request_id()


class RequestIdFilter(logging.Filter):
    """Gives every record ``request_id``: the current click's id, or ``-``.

    Attach it to handlers (a logger's own filters skip records its children log), and
    put ``%(request_id)s`` in their format. A record given one (``extra=``) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id() or _received_request_id(record) or "-"
        return True
