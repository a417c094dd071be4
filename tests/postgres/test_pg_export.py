"""The export on PostgreSQL: from click to email through a real worker, its progress, and
the server-side cursor it streams the posts through."""
from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from app.cli import seed_posts
from app.exports import write_posts_export
from app.extensions import db
from app.models import Post, Task, TaskState, User
from app.storage import LocalStorage
from tests.conftest import LIVE_MAX_ATTACHMENT_BYTES, AuthActions, csrf_token_in
from tests.support.postgres import PostgresServer
from tests.support.services import wait_until
from tests.test_export_flow import EXPORT_SUBJECT, _export_task, _links, _poll_until_finished

SITE = "https://pg.example.org/"
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def test_export_from_click_to_email_to_download(pg_app, mail_sink):
    auth = AuthActions(pg_app.test_client(), base_url=SITE)
    auth.signup("ann")
    bodies = ["first post", "second, with \"quotes\" and ✓", "third\nline"]
    for body in bodies:
        assert auth.post_form("/index", {"post": body}).status_code == 302

    response = auth.post_form("/export_posts", page="/user/ann")
    assert response.status_code == 302 and response.headers["Location"].endswith("/user/ann")
    task = _export_task(pg_app, "ann")
    status, progress = _poll_until_finished(auth, task.id)
    assert status["state"] == TaskState.SUCCESS and status["progress"] == 100 and status["error"] is None
    assert progress == sorted(progress)

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert message.recipients == ["ann@example.com"]
    for part in ("plain", "html"):
        body = message.message.get_body((part,)).get_content()
        assert f"{SITE}exports/{task.id}" in _links(body) and f"{SITE}user/ann" in _links(body)
        assert all(link.startswith(SITE) for link in _links(body))
    (attachment,) = list(message.message.iter_attachments())
    exported = json.loads(attachment.get_content())
    with pg_app.app_context():
        posts = db.session.scalars(sa.select(Post).order_by(Post.id)).all()
        expected = [{"body": p.body, "timestamp": p.timestamp.strftime(ISO_UTC)} for p in posts]
    assert [p["body"] for p in expected] == bodies
    assert exported == {"posts": expected}  # oldest first, UTC as stored (the server runs on New York time)
    now = datetime.now(timezone.utc)
    for post in exported["posts"]:
        written = datetime.strptime(post["timestamp"], ISO_UTC).replace(tzinfo=timezone.utc)
        assert abs(written - now) < timedelta(minutes=5)

    downloaded = auth.get(f"/exports/{task.id}")
    assert downloaded.status_code == 200 and json.loads(downloaded.data) == exported
    assert mail_sink.received(EXPORT_SUBJECT) == [message]


def test_timestamps_are_utc_whatever_the_offset_they_were_written_with(pg_app, tmp_path):
    """Stored as UTC without a zone and formatted by PostgreSQL's to_char: the server's
    time zone (America/New_York here, with its summer time) never leaks into the file."""
    written = [
        datetime(2026, 1, 15, 23, 30, 5, tzinfo=timezone.utc),
        datetime(2026, 7, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2))),  # 2026-06-30T23:00:00Z
        datetime(2026, 3, 8, 7, 15, 0, tzinfo=timezone(timedelta(hours=-5))),  # New York's DST night
    ]
    with pg_app.app_context():
        user = User(username="tz", email="tz@example.com")
        db.session.add(user)
        db.session.commit()
        db.session.add_all(Post(body=f"post {n}", timestamp=when, user_id=user.id)
                           for n, when in enumerate(written))
        db.session.commit()
        count = write_posts_export(user.id, "tz.json", lambda done, total: None, LocalStorage(tmp_path))
    assert count == 3
    assert [p["timestamp"] for p in json.loads((tmp_path / "tz.json").read_text())["posts"]] == [
        "2026-01-15T23:30:05Z", "2026-03-08T12:15:00Z", "2026-06-30T23:00:00Z"]


def test_the_export_streams_through_one_server_side_cursor_in_batches(pg_app, tmp_path):
    """Looked at from inside the export's own transaction: pg_cursors lists the cursor
    psycopg declared for the export's SELECT, and nothing else the session runs is one."""
    with pg_app.app_context():
        user = User(username="streamer", email="streamer@example.com")
        db.session.add(user)
        db.session.commit()
        seed_posts(user, 5000)
        seen: list[tuple[int, list[tuple[str, str]]]] = []

        def progress(done: int, total: int) -> None:
            cursors = db.session.execute(sa.text("SELECT name, statement FROM pg_cursors")).all()
            seen.append((done, [tuple(row) for row in cursors]))

        assert write_posts_export(user.id, "posts.json", progress, LocalStorage(tmp_path)) == 5000
        assert db.session.execute(sa.text("SELECT name FROM pg_cursors")).all() == []  # closed when done
        db.session.rollback()

    assert [done for done, _ in seen] == [2000, 4000, 5000, 5000]  # batches of 2000, then the end
    for _, cursors in seen[:3]:
        (name, statement), = cursors  # exactly one: the export's own, the same all along
        assert re.match(rf'DECLARE "{re.escape(name)}" (NO SCROLL )?CURSOR', statement)
        assert "FROM post" in statement and "ORDER BY post.timestamp, post.id" in statement
    assert len({cursors[0][0] for _, cursors in seen[:3]}) == 1
    assert seen[3][1] == []
    assert len(json.loads((tmp_path / "posts.json").read_text())["posts"]) == 5000


def _waiting_for_lock(server: PostgresServer, query_start: str, wait_event: str | None = None) -> dict | None:
    """A backend of the live database blocked on a lock while running ``query_start...``."""
    with server.connect("live") as connection:
        row = connection.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = coalesce(%s, wait_event) AND query LIKE %s",
            [wait_event, query_start + "%"]).fetchone()
    return row and {"pid": row[0], "query": row[1]}


def test_a_worker_export_fetches_batches_from_a_cursor_and_reports_progress_as_it_goes(
        pg_app, postgres_server, mail_sink):
    """Pause the worker's export at its first progress report by holding the Task row:
    another backend of the worker is then in the middle of its transaction, its last
    statement a FETCH of (at most) 2000 rows from a named cursor. Queue up behind the
    report and let it through: the row shows progress between 0 and 100, and so does
    the progress endpoint, while the export waits to report again."""
    posts = 30_000
    auth = AuthActions(pg_app.test_client(), base_url=SITE)
    auth.signup("sam")
    with pg_app.app_context():
        seed_posts(db.session.scalar(sa.select(User).where(User.username == "sam")), posts)
    token = csrf_token_in(auth.get("/user/sam").get_data(as_text=True))

    timeouts = {"options": "-c lock_timeout=30s"}  # a wrong guess fails the test, never hangs it
    with postgres_server.connect("live", **timeouts) as posts_lock, \
            postgres_server.connect("live", **timeouts) as row_lock, \
            postgres_server.connect("live", **timeouts) as next_lock:
        # 1. The worker marks the task started, then waits to count the posts.
        posts_lock.execute("LOCK TABLE post IN ACCESS EXCLUSIVE MODE")
        assert auth.post("/export_posts", data={"csrf_token": token}).status_code == 302
        task_id = _export_task(pg_app, "sam").id
        wait_until(lambda: _waiting_for_lock(postgres_server, "SELECT count(post.id)"), 30,
                   message="the worker to wait for the posts")
        # 2. Hold the task row, let the export run to its first progress report.
        held = row_lock.execute("SELECT state, progress FROM task WHERE id = %s FOR UPDATE", [task_id])
        assert held.fetchone() == (TaskState.STARTED, 0)
        posts_lock.rollback()
        report = wait_until(lambda: _waiting_for_lock(postgres_server, "UPDATE task SET state"), 30,
                            message="the worker's first progress report")
        with postgres_server.connect("live") as watcher:
            streaming = watcher.execute(
                "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'FETCH%%' AND pid <> %s", [report["pid"]]).fetchall()
        assert len(streaming) == 1, streaming
        (backend_state, fetch), = streaming
        assert backend_state == "idle in transaction"  # the export's transaction, its cursor open
        fetched = re.fullmatch(r'FETCH FORWARD (\d+) FROM "[^"]+"', fetch.strip())
        assert fetched and 0 < int(fetched[1]) <= 2000, fetch  # a batch, never the whole result
        # 3. Queue behind the report (PostgreSQL serves row-lock waiters in order), then let
        #    it through: the queued lock is granted on the row as the report committed it.
        after_report: list[tuple] = []
        queued = threading.Thread(target=lambda: after_report.append(next_lock.execute(
            "SELECT state, progress FROM task WHERE id = %s FOR UPDATE", [task_id]).fetchone()))
        queued.start()
        try:
            wait_until(lambda: _waiting_for_lock(postgres_server, "SELECT state, progress FROM task",
                                                 wait_event="tuple"),
                       30, message="our lock to queue behind the worker's report")
        finally:
            row_lock.commit()
            queued.join(60)
        (state, progress), = after_report
        assert state == TaskState.PROGRESS and 0 < progress < 100
        shown = auth.get(f"/tasks/{task_id}").get_json()
        assert (shown["state"], shown["progress"]) == (TaskState.PROGRESS, progress)
        assert shown["download_url"] is None
        next_lock.commit()

    status, seen = _poll_until_finished(auth, task_id)
    assert status["state"] == TaskState.SUCCESS and status["progress"] == 100
    assert seen == sorted(seen)
    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert list(message.message.iter_attachments()) == []  # too large to attach: linked
    downloaded = auth.get(f"/exports/{task_id}").data
    assert len(downloaded) > LIVE_MAX_ATTACHMENT_BYTES
    exported = json.loads(downloaded)["posts"]
    assert len(exported) == posts
    assert [p["body"] for p in exported[:2]] == ["Post 1 by sam", "Post 2 by sam"]
    assert exported[-1]["body"] == f"Post {posts} by sam"
    with pg_app.app_context():
        assert db.session.get(Task, task_id).finished is not None
