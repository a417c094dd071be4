"""A real worker process runs tasks in the app context, against the shared database."""
import sqlalchemy as sa

from app.extensions import db
from app.models import Task, TaskState, User
from tests.support.services import wait_until


def test_worker_runs_ping_sent_from_a_view_and_updates_the_task_row(live_app, live_auth):
    live_auth.signup("ann")
    response = live_auth.post_form("/ping")
    assert response.status_code == 302
    with live_app.app_context():
        task = db.session.scalar(sa.select(Task))
        assert task is not None and task.name == "ping"
        user = db.session.scalar(sa.select(User).where(User.username == "ann"))
        assert task.user_id == user.id

        def finished():
            db.session.expire_all()
            return db.session.get(Task, task.id).state == TaskState.SUCCESS

        wait_until(finished, 30, message="the worker to finish the ping task")
        row = db.session.get(Task, task.id)
        assert row.progress == 100 and row.finished is not None and row.error is None
    status = live_auth.client.get(f"/tasks/{task.id}").get_json()
    assert status["state"] == "SUCCESS" and status["progress"] == 100


def test_ping_result_reaches_the_result_backend(live_app):
    from app.tasks import ping

    with live_app.app_context():
        user = User(username="bob", email="bob@example.com")
        db.session.add(user)
        db.session.commit()
        from app.jobs import launch_task

        task = launch_task(user, ping, "Ping the worker")
        from celery.result import AsyncResult

        assert AsyncResult(task.id).get(timeout=30) == "pong"
