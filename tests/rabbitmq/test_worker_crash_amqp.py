"""acks_late and reject_on_worker_lost on RabbitMQ: a killed export is run again, one email.

Redis needs a visibility timeout to hand back a dead worker's message (the Redis-only
``broker_transport_options`` that py-amqp ignores); RabbitMQ requeues an unacknowledged
message as soon as the consumer's connection closes. Two real crashes, by SIGKILL, while
the export is writing its file, on a virtual host of their own:

* the whole worker (main process and pool child): the connection drops, RabbitMQ puts
  the message back at once, marked redelivered, and the next worker finishes it;
* only the pool child: the worker's main process stays connected and rejects the message
  back to the queue (``task_reject_on_worker_lost``), and the same worker runs it again.
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
from app.cli import seed_posts
from app.extensions import celery, db
from app.models import AuditEvent, Task, TaskState, User
from config import TestingConfig
from tests.conftest import AuthActions, empty_database
from tests.rabbitmq.conftest import CRASH_VHOST, rabbit_environ
from tests.support.services import WorkerProcess, process_environ, wait_until

SITE = "https://crash.rabbit.example/"
EXPORT_SUBJECT = "Your posts are ready"
#: Enough posts for the export to take a couple of seconds (it streams ~300k posts/s).
POSTS = 600_000

pytestmark = pytest.mark.worker


class CrashStack:
    """The RabbitMQ stack's database on the crash virtual host, with workers started on demand."""

    def __init__(self, environ: dict[str, str], directory: Path, server) -> None:
        self.environ = environ
        self.directory = directory
        self.server = server
        self.app = create_app(TestingConfig(environ))  # binds the test's Celery app to this vhost
        self.workers: list[WorkerProcess] = []

    def start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(process_environ(self.environ), self.directory / f"{name}.log", concurrency=1)
        self.workers.append(worker)  # before start: stopped at teardown whatever happens
        return worker.start(celery)

    def exports_queue(self) -> tuple[int, int]:
        """(messages ready, consumers) of the ``exports`` queue, as RabbitMQ counts them."""
        connection = self.server.connection(CRASH_VHOST)
        try:
            declared = connection.channel().queue_declare("exports", passive=True)
            return declared.message_count, declared.consumer_count
        finally:
            connection.close()

    def peek_export(self):
        """The waiting export message, put back unchanged (basic.get, then reject with requeue)."""
        connection = self.server.connection(CRASH_VHOST)
        try:
            channel = connection.channel()
            message = channel.basic_get("exports", no_ack=False)
            assert message is not None, "no message waiting in exports"
            channel.basic_reject(message.delivery_tag, requeue=True)
            return message
        finally:
            connection.close()

    def wait_until_idle(self, worker: WorkerProcess, timeout: float = 30) -> None:
        def idle() -> bool:
            if self.exports_queue()[0]:
                return False
            inspect = celery.control.inspect([worker.hostname], timeout=1)
            replies = [inspect.active(), inspect.reserved(), inspect.scheduled()]
            return all(reply and reply.get(worker.hostname) == [] for reply in replies)

        wait_until(idle, timeout, interval=0.2, message=f"{worker.hostname} to be idle with an empty queue")


@pytest.fixture
def crash_stack(rabbit_stack, rabbitmq, tmp_path_factory):
    # RabbitMQ hands a dead worker's export back at once: the killed run's lease on the
    # row ends soon after it stopped reporting, and the next run takes over.
    environ = {**rabbit_environ(rabbit_stack.environ, rabbitmq, CRASH_VHOST), "EXPORT_LEASE_SECONDS": "10"}
    stack = CrashStack(environ, tmp_path_factory.mktemp("rabbit-crash"), rabbitmq)
    yield stack
    for worker in stack.workers:
        worker.stop()
    exports = Path(stack.environ["EXPORTS_DIR"])
    with stack.app.app_context():
        for task_id in db.session.scalars(sa.select(Task.id)):
            for leftover in exports.glob(f"*posts-{task_id}.json*"):
                leftover.unlink()
    empty_database(stack.app)
    with stack.app.app_context():
        db.engine.dispose()


def _task_row(app, task_id: str) -> Task:
    with app.app_context():
        db.session.expire_all()
        row = db.session.get(Task, task_id)
        db.session.expunge(row)
        return row


def _start_big_export(stack: CrashStack, username: str) -> str:
    """A user with POSTS posts presses Export; returns the Task id."""
    auth = AuthActions(stack.app.test_client(), base_url=SITE)
    auth.signup(username)
    with stack.app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        assert seed_posts(user, POSTS) == POSTS
    assert auth.post_form("/export_posts", page=f"/user/{username}").status_code == 302
    with stack.app.app_context():
        return db.session.scalar(sa.select(Task.id).join(User).where(User.username == username))


def _wait_until_part_way(stack: CrashStack, task_id: str) -> Task:
    def part_way():
        row = _task_row(stack.app, task_id)
        assert row.finished is None, f"the export ended before the crash: {row.state} {row.error}"
        return row if 1 <= row.progress <= 99 else None

    return wait_until(part_way, 60, interval=0.02, message="the export to be part-way")


def _check_finished_once(stack: CrashStack, task_id: str, username: str, mail_sink) -> None:
    """SUCCESS, the whole file, exactly one email and one audit event."""
    def finished():
        row = _task_row(stack.app, task_id)
        return row if row.finished is not None else None

    done = wait_until(finished, 60, interval=0.1, message=f"export {task_id} to finish")
    assert (done.state, done.progress, done.error) == (TaskState.SUCCESS, 100, None)
    posts = json.loads((Path(stack.environ["EXPORTS_DIR"]) / done.result_location).read_bytes())["posts"]
    assert len(posts) == POSTS and posts[-1]["body"] == f"Post {POSTS} by {username}"
    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert f"{SITE}exports/{task_id}" in message.message.get_body(("plain",)).get_content()
    with stack.app.app_context():
        audited = db.session.scalars(sa.select(AuditEvent.task_id).where(AuditEvent.action == "export_posts"))
        assert list(audited) == [task_id]


def test_a_killed_worker_s_export_is_requeued_at_once_and_finished_by_the_next(crash_stack, mail_sink):
    first = crash_stack.start_worker("first")
    task_id = _start_big_export(crash_stack, "kim")
    _wait_until_part_way(crash_stack, task_id)
    os.killpg(first.process.pid, signal.SIGKILL)  # main process and pool child at once
    first.process.wait(10)
    crashed_at = time.monotonic()

    # No visibility timeout: back in the queue as soon as RabbitMQ sees the connection gone.
    wait_until(lambda: crash_stack.exports_queue() == (1, 0), 10, interval=0.05,
               message="RabbitMQ to requeue the dead worker's export")
    requeued_in = time.monotonic() - crashed_at
    waiting = crash_stack.peek_export()
    assert waiting.headers["id"] == task_id and waiting.delivery_info["redelivered"] is True
    assert _task_row(crash_stack.app, task_id).finished is None
    assert mail_sink.received(EXPORT_SUBJECT) == []

    second = crash_stack.start_worker("second")
    _check_finished_once(crash_stack, task_id, "kim", mail_sink)
    crash_stack.wait_until_idle(second)
    assert len(mail_sink.received(EXPORT_SUBJECT)) == 1  # no second run is left to send another
    assert f"Task app.tasks.export_posts[{task_id}] succeeded" in second.log()
    print(f"requeued {requeued_in:.2f}s after the crash")


def test_a_killed_pool_child_s_export_is_rejected_back_and_run_again(crash_stack, mail_sink):
    worker = crash_stack.start_worker("child")
    stats = celery.control.inspect([worker.hostname], timeout=5).stats()
    (child,) = stats[worker.hostname]["pool"]["processes"]  # -c 1: the one process that runs tasks
    task_id = _start_big_export(crash_stack, "lou")
    _wait_until_part_way(crash_stack, task_id)
    os.kill(child, signal.SIGKILL)  # the main process lives on, still connected
    assert _task_row(crash_stack.app, task_id).finished is None

    _check_finished_once(crash_stack, task_id, "lou", mail_sink)
    crash_stack.wait_until_idle(worker)
    assert worker.process.poll() is None
    log = worker.log()
    assert "WorkerLostError" in log and "signal 9 (SIGKILL)" in log
    # Rejected back at once, the message finds the killed run's lease still on the row:
    # it stands back (a retry after the lease) and then takes the export over.
    assert log.count(f"Task app.tasks.export_posts[{task_id}] received") >= 2
    assert "is leased to another run" in log
    assert len(mail_sink.received(EXPORT_SUBJECT)) == 1
