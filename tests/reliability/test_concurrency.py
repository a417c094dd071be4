"""Promise: simultaneous export clicks start exactly one export per user, under real load.

A real multi-process, multi-threaded web server (gunicorn, 2 workers x 8 threads) on the
live database file: 50 users, each logged in over HTTP with a cookie jar of their own,
click "Export" 4 times at the same instant (200 requests released by one barrier).
Exactly one export per user starts; the 3 other clicks are refused with "Already in
progress" (409 for a JSON client); no request fails with a 5xx, and the server logs no
"database is locked" (SQLite WAL and a busy timeout serialise the writers).

The server's Redis database has no worker, so the exports queue up and stay unfinished:
"one running export per user" is exactly what is being raced for.
"""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from app import create_app
from app.exports import EXPORT_TASK_NAME
from app.extensions import db
from app.models import AuditEvent, Task, User
from config import TestingConfig
from tests.conftest import csrf_token_in, empty_database
from tests.support.web import HTTP_TIMEOUT, Browser, Reply, running_gunicorn

USERS = 50
CLICKS_PER_USER = 4
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def server(live_stack, redis_service, tmp_path_factory):
    idle_db = redis_service.fresh_db()  # a Redis logical database no worker consumes
    environ = {
        **live_stack.environ,
        "REDIS_URL": redis_service.url_for_db(idle_db),
        "WELCOME_EMAIL_DELAY": "3600",
    }
    app = create_app(TestingConfig(environ))  # this process's view of the live database
    log_path = tmp_path_factory.mktemp("concurrency") / "server.log"
    try:
        with running_gunicorn(app, environ, log_path, "--access-logfile", "-") as server:
            yield server
    finally:
        empty_database(app)
        with app.app_context():
            db.engine.dispose()
        redis_service.client(idle_db).flushdb()


def _create_users(app, count: int) -> list[str]:
    """Straight into the database (TestingConfig hashes cheaply): logging in is what matters."""
    names = [f"racer{n:02d}" for n in range(count)]
    with app.app_context():
        for name in names:
            user = User(username=name, email=f"{name}@example.com")
            user.set_password(PASSWORD)
            db.session.add(user)
        db.session.commit()
    return names


def _log_in(base_url: str, username: str) -> tuple[Browser, str]:
    """A browser logged in as ``username``, and the CSRF token of its profile page."""
    browser = Browser(base_url)
    token = csrf_token_in(browser.get("/auth/login").body)
    reply = browser.post("/auth/login", {"username": username, "password": PASSWORD, "csrf_token": token})
    assert reply.status == 302, (username, reply.status, reply.body[:500])
    profile = browser.get(f"/user/{username}")
    assert profile.status == 200, (username, profile.status)
    return browser, csrf_token_in(profile.body)


def _in_parallel(function, items, threads: int) -> list:
    """``function(item)`` for every item on ``threads`` threads; results in order, errors raised."""
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    next_item = iter(range(len(items)))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                index = next(next_item, None)
            if index is None:
                return
            try:
                results[index] = function(items[index])
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                return

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(HTTP_TIMEOUT * 2)
    assert not any(worker.is_alive() for worker in workers), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def test_simultaneous_export_clicks_start_exactly_one_export_per_user(server):
    started = time.monotonic()
    names = _create_users(server.app, USERS)
    sessions = dict(zip(names, _in_parallel(lambda name: _log_in(server.base_url, name), names, threads=8)))
    logged_in = time.monotonic()

    clicks = [(name, n) for name in names for n in range(CLICKS_PER_USER)]
    barrier = threading.Barrier(len(clicks))
    replies: dict[tuple[str, int], Reply] = {}
    errors: list[tuple[tuple[str, int], BaseException]] = []

    def click(key: tuple[str, int]) -> None:
        name, _ = key
        browser, token = sessions[name]
        try:
            barrier.wait(timeout=60)
            replies[key] = browser.post("/export_posts", {"csrf_token": token},
                                        headers={"Accept": "application/json"})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((key, exc))

    threads = [threading.Thread(target=click, args=(key,)) for key in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HTTP_TIMEOUT + 30)
    clicked = time.monotonic()
    print(f"\n{USERS} users created and logged in in {logged_in - started:.1f}s; "
          f"{len(clicks)} simultaneous clicks answered in {clicked - logged_in:.1f}s")

    assert not any(thread.is_alive() for thread in threads), "a click got no answer"
    assert errors == [], errors[:5]
    server_errors = {key: (r.status, r.body[:300]) for key, r in replies.items() if r.status >= 500}
    assert server_errors == {}, list(server_errors.items())[:5]

    for name in names:
        mine = [replies[(name, n)] for n in range(CLICKS_PER_USER)]
        assert sorted(r.status for r in mine) == [202] + [409] * (CLICKS_PER_USER - 1), \
            (name, [(r.status, r.body[:200]) for r in mine])
        (started_reply,) = [r for r in mine if r.status == 202]  # a JSON client: the task started
        task_id = started_reply.json()["task"]["id"]
        assert started_reply.headers["Location"].endswith(f"/tasks/{task_id}")
        assert all("Already in progress" in r.json()["error"] for r in mine if r.status == 409)

    with server.app.app_context():
        per_user = dict(db.session.execute(
            sa.select(User.username, sa.func.count(Task.id))
            .join(Task, Task.user_id == User.id)
            .where(Task.name == EXPORT_TASK_NAME, User.username.in_(names))
            .group_by(User.username)
        ).all())
        assert per_user == {name: 1 for name in names}
        assert db.session.scalar(sa.select(sa.func.count(Task.id)).join(User, User.id == Task.user_id)
                                 .where(User.username.in_(names), Task.finished.is_not(None))) == 0
        # The audit hook swallows its own database errors (logged): each started export
        # must have its line, written under the same contention.
        assert db.session.scalar(
            sa.select(sa.func.count(AuditEvent.id)).join(User, User.id == AuditEvent.user_id)
            .where(User.username.in_(names), AuditEvent.action == "export_posts_requested")
        ) == USERS

    log = server.log()
    assert "database is locked" not in log
    for trouble in ("Traceback", "Could not write audit events", "Could not enqueue", "WORKER TIMEOUT"):
        assert trouble not in log, log[-5000:]
    assert server.process.poll() is None, "the server died"
