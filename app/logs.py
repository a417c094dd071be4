"""One id per click, in every log line: the ``X-Request-Id`` of each response, and the
request id on the web process's and the worker's log records.

The id is Flask-Celery-Request's (:func:`~flask_celery_request.current_request_id`):
the incoming ``X-Request-Id`` when well formed, else a new one, carried sealed to every
task the request sends, their children, retries and the outbox's re-sends.
"""
from __future__ import annotations

import logging
import sys

from celery.signals import after_setup_logger, after_setup_task_logger
from flask import Flask, Response
from flask.logging import default_handler
from flask_celery_request import RequestIdFilter, current_request_id

REQUEST_ID_HEADER = "X-Request-Id"
#: The web process's lines (gunicorn's access log adds the id through its own format).
WEB_LOG_FORMAT = "[%(asctime)s] %(levelname)s [%(request_id)s] %(name)s: %(message)s"
#: Celery's default formats, with the id after the process name.
WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] [%(request_id)s] %(message)s"
WORKER_TASK_LOG_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s] [%(request_id)s] "
                          "%(task_name)s[%(task_id)s]: %(message)s")


def init_app(app: Flask) -> None:
    """Every response says its id; Flask's own handler (``flask run``, a process whose
    root logger has no handler) writes it."""
    app.after_request(add_request_id_header)
    with_request_id(default_handler, WEB_LOG_FORMAT)


def add_request_id_header(response: Response) -> Response:
    request_id = current_request_id()
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def with_request_id(handler: logging.Handler, log_format: str | None = None) -> logging.Handler:
    """Give ``handler`` the request-id filter (once), and ``log_format`` if given."""
    if not any(isinstance(existing, RequestIdFilter) for existing in handler.filters):
        handler.addFilter(RequestIdFilter())
    if log_format is not None:
        handler.setFormatter(logging.Formatter(log_format))
    return handler


def configure_process_logging(level: int = logging.INFO) -> None:
    """For the web server's process (``celery_worker.py`` calls this before building
    the app): one handler on the root logger, with the request id, unless logging is
    configured already. A Celery worker replaces it with its own handlers (below)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(with_request_id(logging.StreamHandler(sys.stderr), WEB_LOG_FORMAT))
    root.setLevel(level)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _worker_handlers_get_request_ids(logger: logging.Logger | None = None, **_kwargs) -> None:
    """Celery sets its handlers up (formats ``worker_log_format`` and
    ``worker_task_log_format``, which name the id): give each the filter."""
    for handler in (logger.handlers if logger is not None else ()):
        with_request_id(handler)
