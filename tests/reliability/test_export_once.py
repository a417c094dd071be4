"""Exactly one export email: the worker killed at each step of an export, and two
copies of one export message at once.

A worker of this module's own (its own Redis database, the live database and SMTP
server) loads ``tests.support.crash_points``, which SIGKILLs the pool process the
first time it reaches the step named in a control file. Celery then rejects the
message back (late acknowledgement, reject on worker lost); the next run finds the
dead run's lease on the row, waits it out (``EXPORT_LEASE_SECONDS`` is 2 here), and
takes over from what the dead run left: the file, the task row, the email's outbox row.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import create_app
from app.exports import EXPORT_EMAIL, MAIL_MAY_HAVE_GONE
from app.extensions import db
from app.jobs import launch_task
from app.models import DeliveryStatus, EmailDelivery, Post, Task, TaskState, User, utcnow
from app.tasks import export_posts
from config import TestingConfig
from tests.conftest import empty_database
from tests.support.services import WorkerProcess, process_environ, wait_until

SITE = "https://once.example.org/"
SUBJECT = "Your posts are ready"
POSTS = 40_000  # enough for several progress reports while the file is written


@pytest.fixture(scope="module")
def once_stack(live_stack, redis_service, tmp_path_factory):
    directory = tmp_path_factory.mktemp("once")
    control = directory / "crash-at"
    control.write_text("")
    environ = {**live_stack.environ, "REDIS_URL": redis_service.url_for_db(redis_service.fresh_db()),
               "EXPORT_LEASE_SECONDS": "2"}
    app = create_app(TestingConfig(environ))  # binds the test's Celery app to this database
    worker = WorkerProcess(process_environ(environ, CRASH_CONTROL=str(control)), directory / "worker.log",
                           concurrency=1, include=["tests.support.crash_points"])
    worker.start(app.extensions["celery"])
    yield app, worker, control
    worker.stop()


@pytest.fixture
def once_app(once_stack):
    app, _, _ = once_stack
    yield app
    empty_database(app)


def _start_export(app, username: str) -> str:
    with app.app_context():
        user = User(username=username, email=f"{username}@example.com")
        user.set_password("correct horse")
        db.session.add(user)
        db.session.commit()
        start = utcnow() - timedelta(seconds=POSTS)
        db.session.execute(sa.insert(Post.__table__), [
            {"body": f"post {n}", "timestamp": start + timedelta(seconds=n), "user_id": user.id}
            for n in range(POSTS)])
        db.session.commit()
        with app.test_request_context("/export_posts", method="POST", base_url=SITE):
            return launch_task(user, export_posts, "Exporting posts...", user.id).id


def _finished(app, task_id: str) -> tuple[Task, EmailDelivery]:
    def done():
        with app.app_context():
            db.session.expire_all()
            row = db.session.get(Task, task_id)
            if row is None or row.finished is None:
                return None
            delivery = db.session.scalar(sa.select(EmailDelivery).where(EmailDelivery.task_id == task_id))
            db.session.expunge(row)
            if delivery is not None:
                db.session.expunge(delivery)
            return row, delivery

    return wait_until(done, 60, interval=0.1, message=f"export {task_id} to finish")


@pytest.mark.parametrize(("step", "emails"), [
    ("writing", 1), ("file_recorded", 1), ("claimed", 0), ("sent", 1), ("marked_sent", 1),
])
def test_a_worker_killed_at_any_step_of_an_export_never_mails_twice(once_stack, once_app, mail_sink, step, emails):
    _, worker, control = once_stack
    control.write_text(step)
    task_id = _start_export(once_app, f"k{step.replace('_', '')}")

    task, delivery = _finished(once_app, task_id)
    # Wait for the run that took over to be done with the message (it acknowledges last).
    wait_until(lambda: f"Task app.tasks.export_posts[{task_id}] succeeded" in worker.log(), 30,
               message="the run that took over to succeed")
    assert control.read_text() == "", f"the worker never reached {step!r}"
    assert "WorkerLostError" in worker.log()

    assert len(mail_sink.received(SUBJECT)) == emails
    assert task.state == TaskState.SUCCESS and task.progress == 100 and task.result_location
    assert delivery.kind == EXPORT_EMAIL and delivery.recipient.startswith("k")
    if step in ("claimed", "sent"):
        # Claimed by the dead run: whether the SMTP server got it cannot be known, so it
        # is not sent again, and the row says so (flask mail-failures lists it).
        assert delivery.status == DeliveryStatus.FAILED and delivery.last_error == MAIL_MAY_HAVE_GONE
        assert delivery.attempts == 1
    else:
        assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 1


def test_a_second_copy_of_an_export_message_sends_no_second_email(once_stack, once_app, mail_sink):
    """A copy that comes while the first run works stands back until its lease ends
    (tests/rabbitmq/test_worker_crash_amqp.py sees that); one that comes later finds
    the export finished."""
    _, worker, _ = once_stack
    task_id = _start_export(once_app, "twice")
    with once_app.app_context():
        user_id = db.session.get(Task, task_id).user_id
        with once_app.test_request_context("/export_posts", method="POST", base_url=SITE):
            export_posts.apply_async((user_id,), task_id=task_id)  # as a redelivery would

    _finished(once_app, task_id)
    wait_until(lambda: worker.log().count(f"Task app.tasks.export_posts[{task_id}] succeeded") == 2, 30,
               message="both copies to end")
    assert len(mail_sink.received(SUBJECT)) == 1
    assert f"Export {task_id} already ended" in worker.log()
