"""The PostgreSQL subset: a real server started for this package, the app migrated onto
it with ``flask db upgrade``, and a real Celery worker using it (on a Redis logical
database of its own).

Never skipped: if the server cannot start, every test here errors with the reason.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from app.extensions import celery, db
from config import TestingConfig
from tests.conftest import LIVE_MAX_ATTACHMENT_BYTES, LiveStack, base_environ, empty_database
from tests.support.postgres import PostgresServer
from tests.support.services import WorkerProcess, flask_db, process_environ

@pytest.fixture(scope="package")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def pg_stack(tmp_path_factory, postgres_server, redis_service, smtp_server) -> Iterator[LiveStack]:
    """A PostgreSQL database built by ``flask db upgrade`` and a worker process using it."""
    directory: Path = tmp_path_factory.mktemp("pg-live")
    url = postgres_server.create_database("live")
    redis_db = redis_service.fresh_db()
    environ = base_environ(directory, redis_service, smtp_server, url, redis_db)
    environ.update(MAIL_MAX_ATTACHMENT_BYTES=str(LIVE_MAX_ATTACHMENT_BYTES),
                   MAIL_RETRY_BACKOFF="0.2", MAIL_RETRY_BACKOFF_MAX="1")
    flask_db(environ, "upgrade")
    create_app(TestingConfig(environ))  # binds the test process's Celery app to this broker
    worker = WorkerProcess(process_environ(environ), directory / "worker.log", concurrency=1).start(celery)
    yield LiveStack(directory, environ, worker, redis_db)
    worker.stop()
    redis_service.client(redis_db).flushdb()  # welcome emails parked for an hour


@pytest.fixture
def make_pg_app(pg_stack) -> Iterator[Callable[..., Flask]]:
    """Apps on the PostgreSQL database, settings overridden by name; every table is
    emptied after the test. Welcome emails wait an hour unless told otherwise, so a
    test's sign-ups send no mail into the next test's inbox."""
    made: list[Flask] = []

    def make(**overrides: str) -> Flask:
        app = create_app(TestingConfig({**pg_stack.environ, "WELCOME_EMAIL_DELAY": "3600", **overrides}))
        made.append(app)
        return app

    yield make
    if made:
        empty_database(made[0])
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def pg_app(make_pg_app) -> Flask:
    return make_pg_app()
