"""One running export per user on PostgreSQL: the partial unique index decides, between
real concurrent transactions of a multi-process web server."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from app import create_app
from app.exports import EXPORT_TASK_NAME
from app.extensions import db
from app.models import Task, User, utcnow
from config import TestingConfig
from tests.conftest import empty_database
from tests.reliability.test_concurrency import _create_users, _in_parallel, _log_in
from tests.support.web import Reply, Server, running_gunicorn
from tests.test_exports import add_task, add_user

USERS = 20
CLICKS_PER_USER = 4


def test_the_database_allows_one_unfinished_task_per_name_and_user(pg_app):
    with pg_app.app_context():
        ann = add_user("ann")
        first = add_task(ann)
        with pytest.raises(sa.exc.IntegrityError) as refused:
            add_task(ann)
        assert isinstance(refused.value.orig, psycopg.errors.UniqueViolation)
        assert "uq_task_one_running_per_user" in str(refused.value)
        db.session.rollback()
        add_task(ann, name="ping")  # another kind may run alongside
        db.session.get(Task, first).finished = utcnow()
        db.session.commit()
        add_task(ann)  # the first one has ended: a new export may start
        assert db.session.scalar(sa.select(sa.func.count(Task.id))) == 3


@pytest.fixture(scope="module")
def web(pg_stack, redis_service, tmp_path_factory) -> Iterator[Server]:
    """gunicorn, 2 processes x 8 threads, on the PostgreSQL database; its Redis database
    has no worker, so every export it starts stays unfinished."""
    idle_db = redis_service.fresh_db()
    environ = {**pg_stack.environ, "REDIS_URL": redis_service.url_for_db(idle_db),
               "WELCOME_EMAIL_DELAY": "3600"}
    app = create_app(TestingConfig(environ))
    try:
        with running_gunicorn(app, environ, tmp_path_factory.mktemp("pg-web") / "server.log") as server:
            yield server
    finally:
        empty_database(app)
        with app.app_context():
            db.engine.dispose()
        redis_service.client(idle_db).flushdb()


def test_simultaneous_export_clicks_start_exactly_one_export_per_user(web):
    names = _create_users(web.app, USERS)
    sessions = dict(zip(names, _in_parallel(lambda name: _log_in(web.base_url, name), names, threads=8)))
    clicks = [(name, n) for name in names for n in range(CLICKS_PER_USER)]
    barrier = threading.Barrier(len(clicks))
    replies: dict[tuple[str, int], Reply] = {}
    errors: list[BaseException] = []

    def click(key: tuple[str, int]) -> None:
        browser, token = sessions[key[0]]
        try:
            barrier.wait(timeout=60)
            replies[key] = browser.post("/export_posts", {"csrf_token": token},
                                        headers={"Accept": "application/json"})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(key,)) for key in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads) and errors == [], errors[:5]

    for name in names:
        mine = [replies[(name, n)] for n in range(CLICKS_PER_USER)]
        assert sorted(r.status for r in mine) == [202] + [409] * (CLICKS_PER_USER - 1), \
            (name, [(r.status, r.body[:300]) for r in mine])
        assert all("Already in progress" in r.json()["error"] for r in mine if r.status == 409)
    with web.app.app_context():
        per_user = dict(db.session.execute(
            sa.select(User.username, sa.func.count(Task.id)).join(Task, Task.user_id == User.id)
            .where(Task.name == EXPORT_TASK_NAME, Task.finished.is_(None)).group_by(User.username)
        ).all())
    assert per_user == {name: 1 for name in names}
    log = web.log()
    for trouble in ("Traceback", "Could not write audit events", "Could not enqueue", "WORKER TIMEOUT"):
        assert trouble not in log, log[-5000:]
