"""A RabbitMQ that hangs (SIGSTOP: a network partition) never hangs a request: the
export is refused within seconds, as for a dead broker, nothing is left running, and
once the node resumes the same app and worker carry the next export through."""
from __future__ import annotations

import os
import signal
import time

import sqlalchemy as sa

from app.extensions import db
from app.models import Task, TaskState, User
from tests.conftest import AuthActions
from tests.reliability.test_broker_outage import FROZEN_BOUND_SECONDS, UNAVAILABLE, _timed_export
from tests.test_export_flow import _export_task, _poll_until_finished


def _export_succeeds(app, auth: AuthActions, username: str) -> Task:
    response = auth.post_form("/export_posts", page=f"/user/{username}")
    assert response.status_code == 302
    task = _export_task(app, username)
    status, _ = _poll_until_finished(auth, task.id, timeout=90)
    assert status["state"] == TaskState.SUCCESS, status
    return task


def _unfinished(app, username: str) -> int:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        return db.session.scalar(sa.select(sa.func.count(Task.id))
                                 .where(Task.user_id == user.id, Task.finished.is_(None)))


def test_a_frozen_rabbitmq_is_refused_in_seconds_and_the_next_export_succeeds(rabbit_app, rabbit_stack, rabbitmq,
                                                                              mail_sink):
    worker = rabbit_stack.worker
    worker_pid = worker.process.pid
    auth = AuthActions(rabbit_app.test_client())
    auth.signup("fay")
    assert auth.post_form("/index", {"post": "frozen"}).status_code == 302
    _export_succeeds(rabbit_app, auth, "fay")  # live connections, as a running site has

    node = os.getpgid(rabbitmq.process.pid)
    os.killpg(node, signal.SIGSTOP)
    try:
        response, elapsed = _timed_export(auth, "fay")
        print(f"browser refusal with a frozen RabbitMQ in {elapsed:.2f}s")
        assert elapsed < FROZEN_BOUND_SECONDS, f"the refusal took {elapsed:.2f}s"
        assert response.status_code == 302
        assert UNAVAILABLE.search(auth.get(response.headers["Location"]).get_data(as_text=True))

        response, elapsed = _timed_export(auth, "fay", Accept="application/json")
        print(f"JSON refusal with a frozen RabbitMQ in {elapsed:.2f}s")
        assert elapsed < FROZEN_BOUND_SECONDS, f"the JSON refusal took {elapsed:.2f}s"
        assert response.status_code == 503 and UNAVAILABLE.search(response.get_json()["error"])
        assert _unfinished(rabbit_app, "fay") == 0
    finally:
        os.killpg(node, signal.SIGCONT)

    started = time.monotonic()
    _export_succeeds(rabbit_app, auth, "fay")
    print(f"export after RabbitMQ resumed in {time.monotonic() - started:.1f}s")
    assert worker.process.poll() is None and worker.process.pid == worker_pid
    assert "Unrecoverable error" not in worker.log()
