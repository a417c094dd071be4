"""A worker of a test module's own whose SMTP server the tests start and stop."""
from __future__ import annotations

import socket
from pathlib import Path

from app import create_app
from app.extensions import celery
from config import TestingConfig
from devservers.smtp_sink import start_sink
from tests.support.services import RedisService, WorkerProcess, process_environ


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MailControlledStack:
    """The live database, a fresh Redis logical database (``redis_db``) and a worker of its
    own, and an SMTP port where nothing listens until :meth:`start_smtp` is called."""

    def __init__(self, live_environ: dict[str, str], redis_service: RedisService, directory: Path,
                 **overrides: str) -> None:
        self.smtp_port = free_port()
        self.redis_db = redis_service.fresh_db()
        self.environ = {
            **live_environ,
            "REDIS_URL": redis_service.url_for_db(self.redis_db),
            "MAIL_PORT": str(self.smtp_port),
            "MAIL_RETRY_ATTEMPTS": "4",
            "MAIL_RETRY_BACKOFF": "0.4",
            "MAIL_RETRY_BACKOFF_MAX": "2",
            **overrides,
        }
        process_env = process_environ(self.environ)
        self.app()  # binds the test process's Celery app to this stack's Redis database
        self.worker = WorkerProcess(process_env, directory / "worker.log", concurrency=1).start(celery)
        self._controllers: list = []

    def app(self, **overrides: str):
        return create_app(TestingConfig({**self.environ, **overrides}))

    def start_smtp(self):
        """A real SMTP server on the stack's port; returns its sink."""
        controller, sink = start_sink(None, "127.0.0.1", self.smtp_port)
        self._controllers.append(controller)
        return sink

    def stop_smtp(self) -> None:
        while self._controllers:
            self._controllers.pop().stop()

    def stop(self) -> None:
        self.stop_smtp()
        self.worker.stop()
