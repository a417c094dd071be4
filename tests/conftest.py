"""Fixtures: apps on fresh databases, a real Redis, a real worker, a real SMTP server."""
from __future__ import annotations

import re
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import celery, db
from config import TestingConfig
from devservers.smtp_sink import start_sink
from tests.support.s3 import S3Server
from tests.support.services import RedisService, WorkerProcess, flask_db, process_environ

TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"
#: The live stack attaches exports up to 100 kB, so "too large" needs only a few thousand posts.
LIVE_MAX_ATTACHMENT_BYTES = 100_000
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token_in(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory):
    service = RedisService(tmp_path_factory.mktemp("redis"))
    yield service
    import gc

    gc.collect()  # AsyncResults unsubscribe from the backend when collected: do it while Redis is up
    service.stop()


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory):
    controller, sink = start_sink(tmp_path_factory.mktemp("mail"))
    yield controller, sink
    controller.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3-compatible server, a real process on 127.0.0.1; a test makes a
    bucket of its own with ``s3_server.new_bucket()``."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def mail_sink(smtp_server):
    """The session's SMTP server, emptied for this test."""
    _, sink = smtp_server
    sink.messages.clear()
    sink.scripted_replies.clear()
    sink.scripted_rcpt_replies.clear()
    return sink


@pytest.fixture(scope="session")
def unit_redis_db(redis_service) -> int:
    """The Redis logical database of the in-process apps (``app``, ``make_app``): never the
    live worker's, which would otherwise run their tasks against its own database."""
    return redis_service.fresh_db()


def base_environ(tmp_path: Path, redis_service: RedisService, smtp_server, database_url: str,
                 redis_db: int) -> dict[str, str]:
    """The settings of a stack on ``database_url`` whose broker and results are Redis logical
    database ``redis_db`` (from ``redis_service.fresh_db()``)."""
    controller, _ = smtp_server
    return {
        "MICROBLOG_CONFIG": "testing",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_service.url_for_db(redis_db),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(controller.port),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "EXPORTS_DIR": str(tmp_path / "instance" / "exports"),
        # Rate-limit counters of this stack alone, in the shared Redis database.
        "RATELIMIT_KEY_PREFIX": rate_limit_prefix(),
    }


def rate_limit_prefix() -> str:
    return f"test-{uuid4().hex}"


@pytest.fixture
def app_environ(tmp_path, redis_service, smtp_server, unit_redis_db) -> dict[str, str]:
    return base_environ(tmp_path, redis_service, smtp_server, f"sqlite:///{tmp_path / 'app.db'}",
                        unit_redis_db)


@pytest.fixture
def make_app(app_environ):
    """Build an app on the test's fresh database, with settings overridden by name (of
    ``config_class``, TestingConfig unless given)."""
    made = []

    def make(config_class: type = TestingConfig, **overrides: str):
        app = create_app(config_class({**app_environ, **overrides}))
        with app.app_context():
            db.create_all()
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


def empty_database(app) -> None:
    """Delete every row (the live database outlives a test; its schema stays)."""
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(db.metadata.sorted_tables):
                connection.execute(sa.delete(table))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class AuthActions:
    """Register, log in and out through the real forms, CSRF token included.

    ``base_url`` is the scheme and host every request uses, as a browser on that site.
    """

    def __init__(self, client, base_url: str = "http://localhost/") -> None:
        self.client = client
        self.base_url = base_url

    def get(self, path: str, **kw):
        return self.client.get(path, base_url=self.base_url, **kw)

    def post(self, path: str, **kw):
        # Browsers send a same-origin Referer; Flask-WTF requires it on HTTPS.
        headers = {"Referer": self.base_url, **kw.pop("headers", {})}
        return self.client.post(path, base_url=self.base_url, headers=headers, **kw)

    def csrf_token(self, path: str = "/auth/login") -> str:
        return csrf_token_in(self.get(path).get_data(as_text=True))

    def register(self, username="susan", email=None, password="correct horse", password2=None, **kw):
        data = {
            "username": username,
            "email": email if email is not None else f"{username}@example.com",
            "password": password,
            "password2": password if password2 is None else password2,
            "csrf_token": self.csrf_token("/auth/register"),
        }
        return self.post("/auth/register", data=data, **kw)

    def login(self, username="susan", password="correct horse", **kw):
        data = {"username": username, "password": password, "csrf_token": self.csrf_token()}
        return self.post("/auth/login", data=data, **kw)

    def signup(self, username="susan", password="correct horse"):
        """Register and log in; return the login response."""
        response = self.register(username, password=password)
        assert response.status_code == 302, response.get_data(as_text=True)
        return self.login(username, password)

    def logout(self):
        token = csrf_token_in(self.get("/").get_data(as_text=True))
        return self.post("/auth/logout", data={"csrf_token": token})

    def post_form(self, path: str, data: dict | None = None, page: str = "/", **kw):
        """POST a form with the CSRF token taken from ``page``."""
        token = csrf_token_in(self.get(page).get_data(as_text=True))
        return self.post(path, data={**(data or {}), "csrf_token": token}, **kw)


@pytest.fixture
def auth(client):
    return AuthActions(client)


# --- the live stack: a migrated database file shared with a real worker process -------


class LiveStack:
    """A database, the Redis logical database ``redis_db`` and a worker using both."""

    def __init__(self, directory: Path, environ: dict[str, str], worker: WorkerProcess,
                 redis_db: int) -> None:
        self.directory = directory
        self.environ = environ
        self.worker = worker
        self.redis_db = redis_db
        self.hook_log = directory / "hooks.jsonl"

    def hook_entries(self) -> list[dict]:
        import json

        if not self.hook_log.exists():
            return []
        return [json.loads(line) for line in self.hook_log.read_text().splitlines() if line]


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory, redis_service, smtp_server):
    """A database built by ``flask db upgrade`` and a Celery worker process using it."""
    directory = tmp_path_factory.mktemp("live")
    redis_db = redis_service.fresh_db()
    environ = base_environ(directory, redis_service, smtp_server, f"sqlite:///{directory / 'live.db'}",
                           redis_db)
    environ["MAIL_MAX_ATTACHMENT_BYTES"] = str(LIVE_MAX_ATTACHMENT_BYTES)
    process_env = process_environ(environ, PROBE_HOOK_LOG=str(directory / "hooks.jsonl"))
    flask_db(environ, "upgrade")
    create_app(TestingConfig(environ))  # binds the test process's Celery app to this broker
    worker = WorkerProcess(process_env, directory / "worker.log", concurrency=1,
                           include=["tests.support.probe_tasks"])
    worker.start(celery)
    yield LiveStack(directory, environ, worker, redis_db)
    worker.stop()


@pytest.fixture
def live_app(live_stack):
    """An app on the live stack's database; every table is emptied after the test."""
    app = create_app(TestingConfig({**live_stack.environ, "RATELIMIT_KEY_PREFIX": rate_limit_prefix()}))
    yield app
    empty_database(app)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


@pytest.fixture
def live_auth(live_client):
    return AuthActions(live_client)


@pytest.fixture(scope="session")
def browser():
    """One chromium for every browser test of the process: Playwright's sync API runs one
    driver at a time, so modules cannot each start their own."""
    from tests.support.browser import chromium

    with chromium() as browser:
        yield browser
