"""Worker crash: an export whose worker is killed mid-way is finished by the next worker,
and the user gets exactly one email.

The module runs its own workers on their own Redis database (sharing the live database
and the session's SMTP server) with a visibility timeout of a few seconds, so Redis
hands the unacknowledged export back soon after the crash. The crash is real: SIGKILL
to the worker's whole process group (main process and pool child) while the export is
writing its file. The replacement worker is usually up before the visibility timeout has
passed since the delivery, so it is usually its periodic sweep for expired unacknowledged
messages, not the one at its start, that takes the export back (see ``celery_settings``:
kombu's default sweep runs every 100 s whatever the timeout).

A second test runs a finished export's message again (as a redelivery would): the
Task row makes it a no-op that answers "already done", with no second email or file.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import celery, db
from app.models import AuditEvent, Task, TaskState, User
from config import TestingConfig
from tests.conftest import AuthActions, empty_database
from tests.support.services import RedisService, WorkerProcess, queued_and_unacked, wait_until

SITE = "https://crash.example.org/"
EXPORT_SUBJECT = "Your posts are ready"
#: Seconds before Redis hands an unacknowledged message to another worker. Longer than
#: the export takes here (a task still running past it would be handed out again).
VISIBILITY_TIMEOUT = 5
#: Enough posts for the export to take a couple of seconds (it streams ~300k posts/s).
POSTS = 600_000

pytestmark = pytest.mark.worker


class CrashStack:
    def __init__(self, directory: Path, environ: dict[str, str], redis_service: RedisService,
                 redis_db: int) -> None:
        self.directory = directory
        self.environ = environ
        self.process_env = {**os.environ, **environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
        self.redis_db = redis_db
        self.redis = redis_service.client(redis_db)
        self.workers: list[WorkerProcess] = []

    def start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(self.process_env, self.directory / f"{name}.log", concurrency=1)
        self.workers.append(worker)  # before start: stopped at teardown whatever happens
        return worker.start(celery)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def queued_and_unacked(self) -> dict[str, int]:
        """Messages waiting in any queue, and messages delivered but not acknowledged."""
        return queued_and_unacked(self.redis)

    def deliveries(self) -> list[tuple[bytes, float]]:
        """Unacknowledged messages: delivery tag and when it was delivered (kombu's index)."""
        return self.redis.zrange("unacked_index", 0, -1, withscores=True)

    def wait_until_idle(self, worker: WorkerProcess, timeout: float = 30) -> None:
        """Nothing queued, nothing unacknowledged, and the worker has nothing in hand."""

        def idle() -> bool:
            if any(self.queued_and_unacked().values()):
                return False
            inspect = celery.control.inspect([worker.hostname], timeout=1)
            replies = [inspect.active(), inspect.reserved(), inspect.scheduled()]
            return all(reply and reply.get(worker.hostname) == [] for reply in replies)

        wait_until(idle, timeout, interval=0.2, message=f"{worker.hostname} to be idle with an empty queue")


@pytest.fixture(scope="module")
def crash_stack(live_stack, redis_service, tmp_path_factory):
    directory = tmp_path_factory.mktemp("crash")
    redis_db = redis_service.fresh_db()
    environ = {
        **live_stack.environ,
        "REDIS_URL": redis_service.url_for_db(redis_db),
        "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        # The killed run's lease on the row ends soon after it stopped reporting.
        "EXPORT_LEASE_SECONDS": "3",
    }
    stack = CrashStack(directory, environ, redis_service, redis_db)
    yield stack
    stack.stop_workers()


@pytest.fixture
def crash_app(crash_stack):
    app = create_app(TestingConfig(crash_stack.environ))  # also binds the test's Celery app to its database
    yield app
    crash_stack.stop_workers()
    exports = Path(crash_stack.environ["EXPORTS_DIR"])
    with app.app_context():
        for task_id in db.session.scalars(sa.select(Task.id)):
            for leftover in exports.glob(f"*posts-{task_id}.json*"):  # the file and temporary files
                leftover.unlink()
    empty_database(app)
    with app.app_context():
        db.engine.dispose()
    crash_stack.redis.flushdb()


def _task_row(app, task_id: str) -> Task:
    with app.app_context():
        db.session.expire_all()
        row = db.session.get(Task, task_id)
        db.session.expunge(row)
        return row


def _latest_task(app, username: str) -> Task:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        row = db.session.scalar(user.tasks.select().order_by(Task.created.desc()))
        db.session.expunge(row)
        return row


def _wait_for_success(app, task_id: str, timeout: float) -> Task:
    def finished():
        row = _task_row(app, task_id)
        return row if row.finished is not None else None

    row = wait_until(finished, timeout, interval=0.1, message=f"export {task_id} to finish")
    assert (row.state, row.progress, row.error) == (TaskState.SUCCESS, 100, None)
    return row


def test_an_export_whose_worker_is_killed_is_finished_by_the_next_worker_with_one_email(
        crash_app, crash_stack, mail_sink):
    auth = AuthActions(crash_app.test_client(), base_url=SITE)
    auth.signup("kim")
    with crash_app.app_context():
        from app.cli import seed_posts

        kim = db.session.scalar(sa.select(User).where(User.username == "kim"))
        assert seed_posts(kim, POSTS) == POSTS

    first = crash_stack.start_worker("first")
    response = auth.post_form("/export_posts", page="/user/kim")
    assert response.status_code == 302
    task_id = _latest_task(crash_app, "kim").id

    def part_way():
        row = _task_row(crash_app, task_id)
        assert row.finished is None, f"the export ended before the crash: {row.state} {row.error}"
        return row if 1 <= row.progress <= 99 else None

    at_crash = wait_until(part_way, 60, interval=0.02, message="the export to be part-way")
    os.killpg(first.process.pid, signal.SIGKILL)  # the crash: main process and pool child at once
    first.process.wait(10)
    crashed_at = time.monotonic()

    row = _task_row(crash_app, task_id)
    assert row.finished is None and row.state == TaskState.PROGRESS and row.progress < 100
    assert crash_stack.queued_and_unacked() == {"unacked": 1}  # Redis still holds it, unacknowledged
    crashed_delivery = crash_stack.deliveries()
    assert mail_sink.received(EXPORT_SUBJECT) == []

    second = crash_stack.start_worker("second")
    path = "periodic sweep" if crash_stack.deliveries() == crashed_delivery else "start-up sweep"
    done = _wait_for_success(crash_app, task_id, timeout=VISIBILITY_TIMEOUT + 60)
    recovered_in = time.monotonic() - crashed_at
    assert done.result_location == f"posts-{task_id}.json"

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert message.recipients == ["kim@example.com"]
    assert f"{SITE}exports/{task_id}" in message.message.get_body(("plain",)).get_content()

    # The whole file, every post once, oldest first. The crashed worker's half-written
    # temporary file is all that is left of it (cleanup_exports removes those after a day).
    exports = Path(crash_stack.environ["EXPORTS_DIR"])
    posts = json.loads((exports / done.result_location).read_bytes())["posts"]
    assert len(posts) == POSTS
    assert posts[0]["body"] == "Post 1 by kim" and posts[-1]["body"] == f"Post {POSTS} by kim"
    (half_written,) = exports.glob(f".posts-{task_id}.json.*.tmp")
    assert 0 < half_written.stat().st_size < (exports / done.result_location).stat().st_size

    # No second run is left to send a second email: the queue is empty and the worker idle.
    crash_stack.wait_until_idle(second)
    assert mail_sink.received(EXPORT_SUBJECT) == [message]
    assert f"Task app.tasks.export_posts[{task_id}] received" in second.log()
    assert f"Task app.tasks.export_posts[{task_id}] succeeded" in second.log()
    with crash_app.app_context():
        audited = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "export_posts")).all()
        assert [event.task_id for event in audited] == [task_id]
    print(f"crashed at {at_crash.progress}%, taken back by the {path}, finished {recovered_in:.1f}s later")


def test_re_running_a_finished_export_sends_nothing_and_says_already_done(crash_app, crash_stack, mail_sink):
    from app.tasks import export_posts

    auth = AuthActions(crash_app.test_client(), base_url=SITE)
    auth.signup("lee")
    for body in ("one", "two", "three"):
        assert auth.post_form("/index", {"post": body}).status_code == 302
    worker = crash_stack.start_worker("rerun")
    assert auth.post_form("/export_posts", page="/user/lee").status_code == 302
    task_id = _latest_task(crash_app, "lee").id
    done = _wait_for_success(crash_app, task_id, timeout=30)
    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    crash_stack.wait_until_idle(worker)
    exported = Path(crash_stack.environ["EXPORTS_DIR"]) / done.result_location
    before = exported.stat()

    with crash_app.app_context():
        user_id = db.session.scalar(sa.select(User.id).where(User.username == "lee"))
    with crash_app.test_request_context("/export_posts", method="POST", base_url=SITE):
        celery.AsyncResult(task_id).forget()  # so that get() waits for the new run's result
        again = export_posts.apply_async((user_id,), task_id=task_id)
        assert again.get(timeout=30) == "already done"

    crash_stack.wait_until_idle(worker)
    assert mail_sink.received(EXPORT_SUBJECT) == [message]
    after = _task_row(crash_app, task_id)
    assert (after.state, after.progress, after.finished, after.result_location) == \
        (done.state, done.progress, done.finished, done.result_location)
    assert (exported.stat().st_mtime_ns, exported.stat().st_size) == (before.st_mtime_ns, before.st_size)
    assert f"Export {task_id} already ended in SUCCESS; not running it again" in worker.log()
    with crash_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(AuditEvent.id))
                                 .where(AuditEvent.action == "export_posts")) == 1
