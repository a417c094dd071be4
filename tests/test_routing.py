"""Exports go to the `exports` queue, emails to `mail`: two workers, each on its own queue."""
from __future__ import annotations

import os
import re

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import celery, db
from app.models import DeliveryStatus, EmailDelivery, Task, TaskState, User
from config import TestingConfig
from tests.conftest import AuthActions, empty_database
from tests.support.services import WorkerProcess, wait_until

SITE = "https://routing.example/"


@pytest.fixture(scope="module")
def routed_workers(live_stack, redis_service, tmp_path_factory):
    """`celery -A celery_worker.celery worker -Q exports` and `... -Q mail`, as deployed."""
    directory = tmp_path_factory.mktemp("routing")
    redis_db = redis_service.fresh_db()
    environ = {**live_stack.environ, "REDIS_URL": redis_service.url_for_db(redis_db)}
    process_env = {**os.environ, **environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
    create_app(TestingConfig(environ))
    workers = {}
    try:
        for queue in ("exports", "mail"):
            workers[queue] = WorkerProcess(process_env, directory / f"{queue}.log", concurrency=1, queues=[queue])
            workers[queue].start(celery)
        yield environ, workers
    finally:
        for worker in workers.values():
            worker.stop()


def _ran(worker: WorkerProcess, task_name: str) -> list[str]:
    return re.findall(rf"Task {re.escape(task_name)}\[([0-9a-f-]+)\] succeeded", worker.log())


def test_each_task_runs_on_the_worker_of_its_queue(routed_workers, mail_sink):
    environ, workers = routed_workers
    app = create_app(TestingConfig(environ))
    try:
        auth = AuthActions(app.test_client(), base_url=SITE)
        auth.signup("rhea")  # the welcome email goes to `mail`
        auth.post_form("/index", {"post": "routed"})
        auth.post_form("/export_posts", page="/user/rhea")  # the export goes to `exports`
        with app.app_context():
            user = db.session.scalar(sa.select(User).where(User.username == "rhea"))
            export_id = db.session.scalar(user.tasks.select().where(Task.name == "export_posts")).id

        def finished():
            with app.app_context():
                db.session.expire_all()
                delivery = db.session.scalar(sa.select(EmailDelivery).where(EmailDelivery.user_id == user.id))
                return (db.session.get(Task, export_id).state == TaskState.SUCCESS
                        and delivery is not None and delivery.status == DeliveryStatus.SENT)

        wait_until(finished, 60, message="the export and the welcome email")
        # The rows are finished before the workers log "succeeded": wait for the lines.
        wait_until(lambda: export_id in _ran(workers["exports"], "app.tasks.export_posts")
                   and _ran(workers["mail"], "app.tasks.send_welcome_email"), 30,
                   message="both workers to log their task's success")
        assert _ran(workers["mail"], "app.tasks.export_posts") == []
        assert len(_ran(workers["mail"], "app.tasks.send_welcome_email")) == 1
        assert _ran(workers["exports"], "app.tasks.send_welcome_email") == []
        assert {m.recipients[0] for m in mail_sink.wait_for(2)} == {"rhea@example.com"}
    finally:
        empty_database(app)


def test_the_routes_are_configuration():
    settings = celery.conf
    assert {q.name for q in settings.task_queues} == {"celery", "exports", "mail"}
    assert settings.task_routes["app.tasks.export_posts"] == {"queue": "exports"}
    assert settings.task_routes["app.tasks.send_welcome_email"] == {"queue": "mail"}
