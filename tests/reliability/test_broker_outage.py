"""Promise: a broker outage, dead or frozen, is refused quickly and cleanly, and recovery
needs no restart.

While Redis is down an export is refused within 2 seconds (a flash for browsers, 503 for
JSON clients) and leaves no Task row running. When Redis comes back on the same socket,
the very same web app (not rebuilt) and the very same worker process (not restarted)
carry the next export through to SUCCESS.

The module runs its own Redis (so it can stop it) and its own worker on it, with a
database file of its own.
"""
from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import celery, db
from app.tasks import ping
from app.models import Post, Task, TaskState, User, utcnow
from config import TestingConfig, redis_socket_url
from devservers.redis_server import start_redis, stop_redis
from tests.conftest import TEST_SECRET_KEY, AuthActions, csrf_token_in
from tests.support.services import WorkerProcess, _die_with_parent, wait_until

SITE = "http://outage.example/"
PASSWORD = "correct horse"
EXPORT_SUBJECT = "Your posts are ready"
#: The product's promise: a refused export answers within this many seconds.
REFUSAL_BOUND_SECONDS = 2.0
UNAVAILABLE = re.compile(r"background service is unavailable.*try again", re.IGNORECASE | re.DOTALL)


class OutageStack:
    """A Redis this module may stop and start, an app and a worker on it."""

    def __init__(self, directory: Path, socket_dir: Path, smtp_server) -> None:
        controller, self.sink = smtp_server
        self.directory = directory
        self.socket_path = socket_dir / "redis.sock"
        self.socket_dir = socket_dir
        self.redis: subprocess.Popen | None = None
        self.worker: WorkerProcess | None = None
        self.environ = {
            "MICROBLOG_CONFIG": "testing",
            "SECRET_KEY": TEST_SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{directory / 'outage.db'}",
            "REDIS_URL": redis_socket_url(self.socket_path),
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(controller.port),
            "INSTANCE_PATH": str(directory / "instance"),
            "EXPORTS_DIR": str(directory / "instance" / "exports"),
            # Every sign-up's welcome email waits in the worker, unacknowledged, for its eta
            # (60 s in production): an outage always finds the worker holding messages.
            "WELCOME_EMAIL_DELAY": "3600",
            # The worker notices a frozen broker within seconds (BRPOP's 1 s plus this).
            "BROKER_HEALTH_CHECK_INTERVAL": "2",
        }

    def start_redis(self) -> None:
        self.redis = start_redis(self.socket_path, self.socket_dir, persist=False,
                                 log_path=self.directory / "redis.log", preexec_fn=_die_with_parent)

    def stop_redis(self) -> None:
        stop_redis(self.redis)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, smtp_server):
    directory = tmp_path_factory.mktemp("broker-outage")
    # A unix socket path must stay short (about 100 bytes): not under pytest's basetemp.
    socket_dir = Path(tempfile.mkdtemp(prefix="mbo-", dir="/tmp"))
    stack = OutageStack(directory, socket_dir, smtp_server)
    app = None
    try:
        stack.start_redis()
        app = create_app(TestingConfig(stack.environ))  # also binds this process's Celery app to it
        with app.app_context():
            db.create_all()
        stack.app = app
        process_env = {**os.environ, **stack.environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
        stack.worker = WorkerProcess(process_env, directory / "worker.log", concurrency=1)
        stack.worker.start(celery)
        yield stack
    finally:
        if stack.worker is not None:
            stack.worker.stop()
        if stack.redis is not None and stack.redis.poll() is None:
            gc.collect()  # AsyncResults unsubscribe when collected: let them while Redis is up
        stack.stop_redis()
        if app is not None:
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def redis_is_up(stack):
    """Each test starts with Redis running, whatever the previous one left."""
    if stack.redis is None or stack.redis.poll() is not None:
        stack.start_redis()


def _add_user(app, username: str, posts: int = 2) -> int:
    with app.app_context():
        user = User(username=username, email=f"{username}@example.com")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.flush()
        db.session.add_all(Post(body=f"{username} post {n}", timestamp=utcnow(), user_id=user.id)
                           for n in range(posts))
        db.session.commit()
        return user.id


def _logged_in(app, username: str) -> AuthActions:
    auth = AuthActions(app.test_client(), base_url=SITE)
    response = auth.login(username, PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return auth


def _tasks(app, user_id: int) -> list[Task]:
    with app.app_context():
        db.session.expire_all()
        rows = db.session.scalars(sa.select(Task).where(Task.user_id == user_id).order_by(Task.created)).all()
        for row in rows:
            db.session.expunge(row)
        return rows


def _timed_export(auth: AuthActions, username: str, **headers: str):
    """POST /export_posts (the token fetched beforehand); the response and its duration."""
    token = csrf_token_in(auth.get(f"/user/{username}").get_data(as_text=True))
    started = time.monotonic()
    response = auth.post("/export_posts", data={"csrf_token": token}, headers=headers)
    return response, time.monotonic() - started


def _wait_for_finished(app, worker: WorkerProcess, task_id: str, timeout: float) -> Task:
    def finished():
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.process.returncode}:\n"
                                 f"{worker.log()[-5000:]}")
        with app.app_context():
            db.session.expire_all()
            row = db.session.get(Task, task_id)
            if row is not None and row.finished is not None:
                db.session.expunge(row)
                return row
            return None

    return wait_until(finished, timeout, interval=0.2, message=f"task {task_id} to finish")


def _stop_redis_and_wait_for_the_worker_to_notice(stack: OutageStack) -> None:
    losses = stack.worker.log().count("Connection to broker lost")
    stack.stop_redis()
    wait_until(lambda: stack.worker.log().count("Connection to broker lost") > losses, 30,
               message="the worker to notice the broker is gone")


def _export_succeeds(stack: OutageStack, auth: AuthActions, username: str, user_id: int,
                     timeout: float) -> Task:
    before = {row.id for row in _tasks(stack.app, user_id)}
    response, _ = _timed_export(auth, username)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert "Your export has started" in auth.get(response.headers["Location"]).get_data(as_text=True)
    (new,) = [row for row in _tasks(stack.app, user_id) if row.id not in before]
    done = _wait_for_finished(stack.app, stack.worker, new.id, timeout)
    assert done.state == TaskState.SUCCESS and done.error is None, \
        (done.state, done.error, stack.worker.log()[-3000:])
    mails = [m for m in stack.sink.received(EXPORT_SUBJECT) if m.recipients == [f"{username}@example.com"]
             and f"/exports/{done.id}" in m.message.get_body(("plain",)).get_content()]
    assert len(mails) == 1, "the export email did not arrive (or arrived twice)"
    return done


def test_exports_are_refused_fast_during_an_outage_and_work_again_without_restarts(stack):
    app, worker = stack.app, stack.worker
    worker_pid = worker.process.pid

    # Before the outage: the web process has already talked to Redis (producer
    # connection and result-backend subscription are live), as a running site has.
    warm_id = _add_user(app, "warm")
    _export_succeeds(stack, _logged_in(app, "warm"), "warm", warm_id, timeout=60)

    ann_id = _add_user(app, "ann")
    ann = _logged_in(app, "ann")
    wait_until(lambda: worker.log().count("send_welcome_email[") >= 2, 30,
               message="the worker to hold both welcome emails until their eta")

    connects = worker.log().count("Connected to redis+socket://")
    _stop_redis_and_wait_for_the_worker_to_notice(stack)

    # A browser: a quick redirect back to the profile, with a clear flash message.
    response, elapsed = _timed_export(ann, "ann")
    assert elapsed < REFUSAL_BOUND_SECONDS, f"the refusal took {elapsed:.2f}s"
    print(f"browser refusal in {elapsed:.2f}s")
    assert response.status_code == 302 and response.headers["Location"].endswith("/user/ann")
    page = ann.get(response.headers["Location"]).get_data(as_text=True)
    assert UNAVAILABLE.search(page), page
    assert "Your export has started" not in page

    # A JSON client: 503 with the same reason.
    response, elapsed = _timed_export(ann, "ann", Accept="application/json")
    assert elapsed < REFUSAL_BOUND_SECONDS, f"the JSON refusal took {elapsed:.2f}s"
    print(f"JSON refusal in {elapsed:.2f}s")
    assert response.status_code == 503, response.get_data(as_text=True)[:500]
    assert UNAVAILABLE.search(response.get_json()["error"])

    # Nothing is left "running": each attempt's row ended in FAILURE at once.
    rows = _tasks(app, ann_id)
    assert len(rows) == 2
    assert all(row.finished is not None and row.state == TaskState.FAILURE for row in rows), rows
    assert all("background service is unavailable" in row.error for row in rows), rows
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Task.id)).where(Task.finished.is_(None))) == 0

    # Redis returns on the same socket. Same app object, same worker process.
    stack.start_redis()
    started = time.monotonic()
    done = _export_succeeds(stack, ann, "ann", ann_id, timeout=90)
    recovery = time.monotonic() - started
    assert worker.process.poll() is None and worker.process.pid == worker_pid
    assert "Unrecoverable error" not in worker.log()
    assert worker.log().count("Connected to redis+socket://") > connects  # it reconnected by itself
    print(f"recovered export {done.id} in {recovery:.1f}s")


def test_a_redis_restart_no_request_saw_does_not_break_the_next_export(stack):
    """Redis restarts between two requests: the web process's connections (producer,
    result subscription) are stale rather than refused, and the worker holds messages."""
    app, worker = stack.app, stack.worker
    worker_pid = worker.process.pid
    held = worker.log().count("send_welcome_email[")
    bea_id = _add_user(app, "bea")
    bea = _logged_in(app, "bea")
    _export_succeeds(stack, bea, "bea", bea_id, timeout=60)
    wait_until(lambda: worker.log().count("send_welcome_email[") > held, 30,
               message="the worker to hold bea's welcome email until its eta")

    _stop_redis_and_wait_for_the_worker_to_notice(stack)
    stack.start_redis()

    started = time.monotonic()
    _export_succeeds(stack, bea, "bea", bea_id, timeout=90)
    print(f"export after an unseen restart in {time.monotonic() - started:.1f}s")
    assert [row.state for row in _tasks(app, bea_id)] == [TaskState.SUCCESS, TaskState.SUCCESS]
    assert worker.process.poll() is None and worker.process.pid == worker_pid
    assert "Unrecoverable error" not in worker.log()


#: The issue's promise for a broker that hangs instead of refusing: an answer within this.
FROZEN_BOUND_SECONDS = 3.0


def test_a_frozen_broker_is_refused_in_seconds_and_the_next_export_succeeds(stack):
    """Redis stops answering without closing anything (SIGSTOP: a network partition): the
    export is refused as for a dead broker, within seconds, leaving nothing running; once
    Redis resumes, the same app and worker carry the next export through."""
    app, worker = stack.app, stack.worker
    worker_pid = worker.process.pid
    cy_id = _add_user(app, "cy")
    cy = _logged_in(app, "cy")
    _export_succeeds(stack, cy, "cy", cy_id, timeout=60)  # live connections, as a running site has

    os.kill(stack.redis.pid, signal.SIGSTOP)
    try:
        response, elapsed = _timed_export(cy, "cy")
        print(f"browser refusal with a frozen broker in {elapsed:.2f}s")
        assert elapsed < FROZEN_BOUND_SECONDS, f"the refusal took {elapsed:.2f}s"
        assert response.status_code == 302 and response.headers["Location"].endswith("/user/cy")
        assert UNAVAILABLE.search(cy.get(response.headers["Location"]).get_data(as_text=True))

        response, elapsed = _timed_export(cy, "cy", Accept="application/json")
        print(f"JSON refusal with a frozen broker in {elapsed:.2f}s")
        assert elapsed < FROZEN_BOUND_SECONDS, f"the JSON refusal took {elapsed:.2f}s"
        assert response.status_code == 503 and UNAVAILABLE.search(response.get_json()["error"])
        with app.app_context():
            assert db.session.scalar(sa.select(sa.func.count(Task.id)).where(Task.finished.is_(None))) == 0

        started = time.monotonic()
        health = cy.client.get("/healthz")
        assert time.monotonic() - started < FROZEN_BOUND_SECONDS
        assert health.status_code == 503 and health.get_json()["checks"]["broker"]["ok"] is False
    finally:
        os.kill(stack.redis.pid, signal.SIGCONT)

    started = time.monotonic()
    _export_succeeds(stack, cy, "cy", cy_id, timeout=90)
    print(f"export after the broker resumed in {time.monotonic() - started:.1f}s")
    assert worker.process.poll() is None and worker.process.pid == worker_pid
    assert "Unrecoverable error" not in worker.log()


def test_a_worker_survives_a_long_freeze_and_reconnects(stack):
    """Frozen long enough for a polling worker to drop its silent connection: it keeps
    running, reconnects once Redis answers again, and exports go through again.

    A worker of its own, on a queue of its own: the module's worker holds welcome emails
    until their eta, its prefetch is full and it is not polling, so it has no reply to
    miss; a worker that took one of those emails would not be polling either."""
    app = stack.app
    process_env = {**os.environ, **stack.environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
    polling = WorkerProcess(process_env, stack.directory / "polling-worker.log", concurrency=1,
                            queues=["freeze-test"])
    polling.start(celery)
    try:
        pid = polling.process.pid
        # Its consumer loop is running (a task through its queue), so a BRPOP is in flight
        # when Redis freezes.
        assert ping.apply_async(queue="freeze-test").get(timeout=30) == "pong"
        dee_id = _add_user(app, "dee")
        dee = _logged_in(app, "dee")
        os.kill(stack.redis.pid, signal.SIGSTOP)
        try:
            # Its BRPOP health check drops the connection, or a command of its own times
            # out first (WORKER_BROKER_SOCKET_TIMEOUT) and the consumer reconnects. In a loaded
            # run neither may show within the minute (the reply to its BRPOP simply
            # awaited, seen once in the full suite): the freeze then lasts that minute,
            # and what must hold either way is checked below, after it.
            try:
                wait_until(lambda: any(sign in polling.log() for sign in ("got no reply", "Connection to broker lost")),
                           60, message="the polling worker to drop its silent broker connection")
            except AssertionError:
                print("the polling worker waited out the freeze without dropping its connection")
        finally:
            os.kill(stack.redis.pid, signal.SIGCONT)
        wait_until(lambda: celery.control.ping(destination=[polling.hostname], timeout=1), 60,
                   message="the polling worker to answer through the broker again")
        _export_succeeds(stack, dee, "dee", dee_id, timeout=90)
        assert polling.process.poll() is None and polling.process.pid == pid
        assert "Unrecoverable error" not in polling.log()
    finally:
        polling.stop()
