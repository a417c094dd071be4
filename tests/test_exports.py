"""Exporting posts, in process (no worker): the file, progress, email, audit, views, cleanup.

The full path through a real worker is tests/test_export_flow.py; here every piece is
driven directly so that each behaviour is checked on its own.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as so
from flask_login import login_user

from app.cli import seed_posts
from app.exports import (
    EXPORT_TASK_NAME,
    ExportEmailError,
    ProgressReporter,
    cleanup_exports,
    export_file_name,
    run_export,
    write_posts_export,
)
from app.extensions import db
from app.models import AuditEvent, Post, Task, TaskState, User, utcnow
from app.storage import LocalStorage, exports_dir
from tests.conftest import AuthActions, csrf_token_in

SITE = "https://blog.example.org/"
PASSWORD = "correct horse"
EMAIL_FAILED = ("Your export is ready to download from this site, "
                "but we could not send you the email about it.")


# --- helpers -------------------------------------------------------------------------


def add_user(username: str) -> int:
    """A user who can log in with PASSWORD (call inside an app context)."""
    user = User(username=username, email=f"{username}@example.com")
    user.set_password(PASSWORD)
    db.session.add(user)
    db.session.commit()
    return user.id


def add_task(user_id: int, name: str = EXPORT_TASK_NAME, **fields) -> str:
    """A Task row made through the model, PENDING unless told (inside an app context)."""
    task = Task(id=str(uuid4()), name=name, description=fields.pop("description", "Exporting posts..."),
                user_id=user_id, state=fields.pop("state", TaskState.PENDING), **fields)
    db.session.add(task)
    db.session.commit()
    return task.id


def add_posts(user_id: int, *posts: tuple[str, datetime]) -> None:
    db.session.add_all(Post(body=body, timestamp=when, user_id=user_id) for body, when in posts)
    db.session.commit()


def no_progress(done: int, total: int) -> None:
    pass


def export_to_file(user_id: int, path: Path, progress=no_progress) -> int:
    """write_posts_export into the file ``path``, in a directory of the test's own."""
    return write_posts_export(user_id, path.name, progress, LocalStorage(path.parent))


def finished_export(user_id: int, *, finished: datetime | None = None, name: str = EXPORT_TASK_NAME) -> str:
    """A finished export with its file written (inside an app context)."""
    task_id = str(uuid4())
    write_posts_export(user_id, export_file_name(task_id), no_progress)
    db.session.add(Task(id=task_id, name=name, description="Exporting posts...", user_id=user_id,
                        state=TaskState.SUCCESS, progress=100, finished=finished or utcnow(),
                        result_location=export_file_name(task_id)))
    db.session.commit()
    return task_id


def fresh_task(task_id: str) -> Task:
    """The Task row as committed, read in a session (and connection) of its own."""
    with so.Session(db.engine, expire_on_commit=False) as session:
        return session.get(Task, task_id)


def links(text: str) -> list[str]:
    return re.findall(r"https?://[^\s\"<>]+", text)


def bodies_of(message) -> tuple[str, str]:
    return (message.message.get_body(("plain",)).get_content(),
            message.message.get_body(("html",)).get_content())


def logged_in(app, username: str, base_url: str = "http://localhost/") -> AuthActions:
    auth = AuthActions(app.test_client(), base_url=base_url)
    response = auth.login(username, PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)
    return auth


# --- 1. write_posts_export -------------------------------------------------------------


def test_export_lists_only_the_users_posts_oldest_first_with_utc_timestamps(app, tmp_path):
    utc, plus_two = timezone.utc, timezone(timedelta(hours=2))
    with app.app_context():
        ann, bob = add_user("ann"), add_user("bob")
        # Inserted out of time order; one in another time zone, one with microseconds.
        add_posts(ann,
                  ("third", datetime(2024, 3, 1, 12, 0, 0, tzinfo=utc)),
                  ('"quoted" and \\ back\\slash', datetime(2024, 1, 1, 10, 30, 5, tzinfo=plus_two)),
                  ("line one\nline two\ttab\r\n", datetime(2024, 2, 1, 0, 0, 0, 999_999, tzinfo=utc)),
                  ("unicode ✓ é 日本 🎉 \u2028 </script>",
                   datetime(2024, 1, 15, 23, 59, 59, tzinfo=utc)))
        add_posts(bob, ("not ann's", datetime(2024, 1, 20, tzinfo=utc)))
        destination = tmp_path / "out" / "ann.json"
        count = export_to_file(ann, destination, no_progress)

    assert count == 4
    assert json.loads(destination.read_text(encoding="utf-8")) == {"posts": [
        {"body": '"quoted" and \\ back\\slash', "timestamp": "2024-01-01T08:30:05Z"},
        {"body": "unicode ✓ é 日本 🎉 \u2028 </script>", "timestamp": "2024-01-15T23:59:59Z"},
        {"body": "line one\nline two\ttab\r\n", "timestamp": "2024-02-01T00:00:00Z"},
        {"body": "third", "timestamp": "2024-03-01T12:00:00Z"},
    ]}


def test_export_of_a_user_without_posts_is_an_empty_list(app, tmp_path):
    with app.app_context():
        ann = add_user("ann")
        add_posts(add_user("bob"), ("bob's", utcnow()))
        destination = tmp_path / "ann.json"
        assert export_to_file(ann, destination, no_progress) == 0
    assert json.loads(destination.read_bytes()) == {"posts": []}


def test_export_is_written_under_a_temporary_name_then_renamed(app, tmp_path, monkeypatch):
    monkeypatch.setattr("app.exports._STREAM_BATCH", 1)  # a progress call after every post
    seen_while_writing = []
    destination = tmp_path / "exports" / "posts.json"

    def progress(done, total):
        names = sorted(p.name for p in destination.parent.iterdir())
        seen_while_writing.append((destination.exists(), names))

    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, *((f"post {n}", utcnow() - timedelta(minutes=n)) for n in range(3)))
        export_to_file(ann, destination, progress)

    assert len(seen_while_writing) >= 3, "progress was not called after every batch"
    for exists, names in seen_while_writing[:3]:  # during the loop over the rows
        assert not exists
        assert len(names) == 1 and names[0].startswith(".posts.json") and names[0].endswith(".tmp")
    assert sorted(p.name for p in destination.parent.iterdir()) == ["posts.json"]
    assert len(json.loads(destination.read_text())["posts"]) == 3


def test_an_export_failing_midway_leaves_neither_file_nor_temporary(app, tmp_path, monkeypatch):
    monkeypatch.setattr("app.exports._STREAM_BATCH", 1)
    destination = tmp_path / "exports" / "posts.json"

    def progress(done, total):
        if done == 3:
            raise RuntimeError("stopped midway")

    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, *((f"post {n}", utcnow() - timedelta(minutes=n)) for n in range(5)))
        with pytest.raises(RuntimeError, match="stopped midway"):
            export_to_file(ann, destination, progress)

    assert not destination.exists()
    assert list(destination.parent.iterdir()) == []


# --- 2. ProgressReporter ---------------------------------------------------------------


class RecordingReporter(ProgressReporter):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[int] = []

    def record(self, percent: int, *counts) -> None:
        self.recorded.append(percent)
        super().record(percent, *counts)


@pytest.fixture
def task_updates(app):
    """Every UPDATE of the task table sent to the database."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE TASK"):
            statements.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    yield statements
    sa.event.remove(engine, "before_cursor_execute", count)


def test_progress_of_5000_posts_is_recorded_at_most_once_per_percent(app, tmp_path, task_updates):
    with app.app_context():
        ann = add_user("ann")
        seed_posts(db.session.get(User, ann), 5_000)
        task_id = add_task(ann)
        reporter = RecordingReporter(task_id, min_interval=0)
        assert export_to_file(ann, tmp_path / "ann.json", reporter) == 5_000

        assert 2 <= len(reporter.recorded) <= 101
        assert all(a < b for a, b in zip(reporter.recorded, reporter.recorded[1:]))
        assert reporter.recorded[-1] == 100
        assert reporter.reports == len(reporter.recorded) == len(task_updates)
        row = fresh_task(task_id)
        assert (row.progress, row.state, row.finished) == (100, TaskState.PROGRESS, None)


def test_progress_with_a_long_interval_records_only_the_first_report_and_100(app, tmp_path, task_updates):
    with app.app_context():
        ann = add_user("ann")
        seed_posts(db.session.get(User, ann), 5_000)
        task_id = add_task(ann)
        reporter = RecordingReporter(task_id, min_interval=3600)
        export_to_file(ann, tmp_path / "ann.json", reporter)

        # The first report (after the first batch of rows), then only 100.
        assert len(reporter.recorded) == 2 and reporter.recorded[0] < 100 and reporter.recorded[1] == 100
        assert len(task_updates) == 2
        assert fresh_task(task_id).progress == 100


def test_progress_is_written_on_a_connection_of_its_own(app):
    with app.app_context():
        task_id = add_task(add_user("ann"))
        in_session = db.session.get(Task, task_id)
        assert in_session.progress == 0
        ProgressReporter(task_id, min_interval=0)(37, 100)

        assert fresh_task(task_id).progress == 37  # committed, seen from another connection
        assert fresh_task(task_id).state == TaskState.PROGRESS
        assert in_session.progress == 0 and not db.session.dirty  # the ORM session did not write it


# --- 3. memory -------------------------------------------------------------------------


def test_export_memory_does_not_grow_with_the_number_of_posts(app, tmp_path):
    def peak_while_exporting(user_id: int, task_id: str, name: str) -> int:
        tracemalloc.start()
        try:
            export_to_file(user_id, tmp_path / name, ProgressReporter(task_id, min_interval=0))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    with app.app_context():
        small, big = add_user("small"), add_user("big")
        seed_posts(db.session.get(User, small), 5_000)
        seed_posts(db.session.get(User, big), 50_000)
        small_task, big_task = add_task(small), add_task(big)
        peak_while_exporting(small, small_task, "warm-up.json")  # compiled-statement caches and the like
        small_peak = peak_while_exporting(small, small_task, "small.json")
        big_peak = peak_while_exporting(big, big_task, "big.json")

    assert big_peak - small_peak < 1_500_000, (small_peak, big_peak)
    assert len(json.loads((tmp_path / "big.json").read_bytes())["posts"]) == 50_000


# --- 4. run_export, in process ---------------------------------------------------------


def export_in_request(app, task_id: str, user_id: int, **environ) -> str:
    with app.test_request_context("/export_posts", method="POST", base_url=SITE, **environ):
        return run_export(task_id, user_id)


def test_run_export_sends_one_email_with_site_links_and_the_file(app, mail_sink):
    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, ("first", utcnow() - timedelta(hours=2)),
                  ("second ✓", utcnow() - timedelta(hours=1)))
        task_id = add_task(ann)

    assert export_in_request(app, task_id, ann) == export_file_name(task_id)

    (message,) = mail_sink.wait_for(1)
    assert message.recipients == ["ann@example.com"]
    download, profile = f"{SITE}exports/{task_id}", f"{SITE}user/ann"
    for body in bodies_of(message):
        assert download in links(body) and profile in links(body)
        assert all(link.startswith(SITE) for link in links(body))
    (attachment,) = message.message.iter_attachments()
    assert attachment.get_filename() == "ann-posts.json"
    attached = json.loads(attachment.get_content())
    assert [post["body"] for post in attached["posts"]] == ["first", "second ✓"]
    with app.app_context():
        row = fresh_task(task_id)
        assert (row.state, row.progress, row.error) == (TaskState.SUCCESS, 100, None)
        assert row.finished is not None and row.result_location == export_file_name(task_id)
        assert json.loads((exports_dir() / row.result_location).read_bytes()) == attached


def test_running_a_finished_export_again_sends_nothing(app, mail_sink):
    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, ("a post", utcnow()))
        task_id = add_task(ann)
    export_in_request(app, task_id, ann)
    mail_sink.wait_for(1)
    with app.app_context():
        finished = fresh_task(task_id).finished

    assert export_in_request(app, task_id, ann) == "already done"
    assert len(mail_sink.messages) == 1  # sending is synchronous: a second email would be here
    with app.app_context():
        assert fresh_task(task_id).finished == finished


@pytest.fixture
def small_attachment_app(make_app):
    return make_app(MAIL_MAX_ATTACHMENT_BYTES="50")


def test_an_export_above_the_attachment_limit_is_linked_not_attached(small_attachment_app, mail_sink):
    app = small_attachment_app
    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, *((f"post number {n}", utcnow() - timedelta(minutes=n)) for n in range(3)))
        task_id = add_task(ann)

    export_in_request(app, task_id, ann)

    (message,) = mail_sink.wait_for(1)
    assert list(message.message.iter_attachments()) == []
    text, html = bodies_of(message)
    assert "too large to attach" in text and "too large to attach" in html
    assert f"{SITE}exports/{task_id}" in links(text)
    with app.app_context():
        assert fresh_task(task_id).state == TaskState.SUCCESS
        size = (exports_dir() / export_file_name(task_id)).stat().st_size
    assert size > 50
    assert f"({size} Bytes)" in text and f"({size} Bytes)" in html  # not "(0.0 MB) is too large"


@pytest.mark.parametrize("who", ["a deleted user", "another user"])
def test_an_export_for_a_user_who_is_not_its_owner_fails_without_email(app, mail_sink, who):
    with app.app_context():
        ann, other = add_user("ann"), add_user("bob")
        add_posts(ann, ("a post", utcnow()))
        task_id = add_task(ann)
        if who == "a deleted user":
            db.session.delete(db.session.get(User, other))
            db.session.commit()

    assert export_in_request(app, task_id, other) == "no user"

    with app.app_context():
        row = fresh_task(task_id)
        assert row.state == TaskState.FAILURE and row.finished is not None
        assert "no longer exists" in row.error
        assert row.result_location is None
        assert not exports_dir().exists() or list(exports_dir().iterdir()) == []
    assert mail_sink.messages == []


def test_an_export_whose_owner_was_deleted_is_skipped(app, mail_sink):
    with app.app_context():
        ann = add_user("ann")
        task_id = add_task(ann)
        db.session.delete(db.session.get(User, ann))
        db.session.commit()
        assert db.session.get(Task, task_id) is None  # went with the account

    assert export_in_request(app, task_id, ann) == "missing"
    assert mail_sink.messages == []


def test_an_smtp_rejection_fails_the_task_but_keeps_the_download(app, mail_sink):
    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, ("a post", utcnow()))
        task_id = add_task(ann)
    mail_sink.scripted_replies.append("554 5.0.0 rejected")

    with pytest.raises(ExportEmailError):
        export_in_request(app, task_id, ann)

    assert mail_sink.scripted_replies == []  # the server was really asked, and said no
    assert mail_sink.messages == []
    with app.app_context():
        row = fresh_task(task_id)
        assert row.state == TaskState.FAILURE and row.finished is not None
        assert row.error == EMAIL_FAILED
        assert (exports_dir() / row.result_location).is_file()
    auth = logged_in(app, "ann")
    status = auth.get(f"/tasks/{task_id}").get_json()
    assert status["state"] == "FAILURE" and status["error"] == EMAIL_FAILED
    assert status["download_url"] == f"/exports/{task_id}"
    assert auth.get(status["download_url"]).status_code == 200


# --- 5. the audit hook -----------------------------------------------------------------


def test_run_export_in_a_request_is_audited_when_the_response_is_finished(app, mail_sink):
    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, *((f"post {n}", utcnow() - timedelta(minutes=n)) for n in range(3)))
        task_id = add_task(ann)

    with app.test_request_context("/export_posts", method="POST", base_url=SITE,
                                  environ_base={"REMOTE_ADDR": "203.0.113.9"},
                                  headers={"User-Agent": "Probe/1.0"}):
        login_user(db.session.get(User, ann))
        run_export(task_id, ann)
        assert db.session.scalar(sa.select(sa.func.count(AuditEvent.id))) == 0  # not before the hook
        app.process_response(app.response_class())

    with app.app_context():
        (event,) = db.session.scalars(sa.select(AuditEvent)).all()
    assert event.action == "export_posts" and json.loads(event.detail)["posts"] == 3
    assert json.loads(event.detail)["attached"] is True
    assert (event.host, event.remote_addr, event.path, event.method) == (
        "blog.example.org", "203.0.113.9", "/export_posts", "POST")
    assert event.user_id == ann and event.user_agent == "Probe/1.0"
    assert event.via_worker is False and event.task_id is None


def test_a_view_that_records_an_audit_event_writes_it(app, auth):
    with app.app_context():
        ann = add_user("ann")
    auth.login("ann", PASSWORD)

    response = auth.post_form("/export_posts", page="/user/ann", environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert response.status_code == 302

    with app.app_context():
        (event,) = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action != "signed_in")).all()
    assert event.action == "export_posts_requested" and event.user_id == ann
    assert (event.host, event.remote_addr, event.path, event.method) == (
        "localhost", "198.51.100.4", "/export_posts", "POST")
    assert event.via_worker is False and event.task_id is None


# --- 6. the export_posts view ----------------------------------------------------------


def task_rows(user_id: int) -> list[Task]:
    return db.session.scalars(sa.select(Task).where(Task.user_id == user_id)).all()


def test_export_without_csrf_token_is_refused(app, auth):
    with app.app_context():
        ann = add_user("ann")
    auth.login("ann", PASSWORD)
    response = auth.post("/export_posts", data={})
    assert response.status_code == 400
    with app.app_context():
        assert task_rows(ann) == []


def test_export_by_get_is_not_allowed(app, auth):
    with app.app_context():
        add_user("ann")
    auth.login("ann", PASSWORD)
    response = auth.get("/export_posts")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


def test_export_by_an_anonymous_visitor_goes_to_login(app, auth):
    with app.app_context():
        add_user("ann")
    response = auth.post("/export_posts", data={"csrf_token": auth.csrf_token()})
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Task.id))) == 0


@pytest.fixture
def ann_exporting(app, auth) -> tuple[int, str]:
    """ann, logged in, with an unfinished export already."""
    with app.app_context():
        ann = add_user("ann")
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=10)
    auth.login("ann", PASSWORD)
    return ann, task_id


def test_a_second_export_while_one_runs_is_refused_with_a_flash(app, auth, ann_exporting):
    ann, task_id = ann_exporting
    response = auth.post_form("/export_posts", page="/user/ann")
    assert response.status_code == 302 and response.headers["Location"].endswith("/user/ann")
    assert "Already in progress" in auth.get("/user/ann").get_data(as_text=True)
    with app.app_context():
        assert [row.id for row in task_rows(ann)] == [task_id]


def test_a_second_export_while_one_runs_is_409_for_json_clients(app, auth, ann_exporting):
    ann, task_id = ann_exporting
    response = auth.post_form("/export_posts", page="/user/ann", headers={"Accept": "application/json"})
    assert response.status_code == 409
    assert "Already in progress" in response.get_json()["error"]
    assert "Already in progress" not in auth.get("/user/ann").get_data(as_text=True)  # nothing flashed
    with app.app_context():
        assert [row.id for row in task_rows(ann)] == [task_id]


def test_the_database_allows_one_unfinished_task_per_name_and_user(app):
    with app.app_context():
        ann = add_user("ann")
        first = add_task(ann)
        with pytest.raises(sa.exc.IntegrityError):
            add_task(ann)
        db.session.rollback()
        add_task(ann, name="ping")  # another kind may run alongside
        db.session.get(Task, first).finished = utcnow()
        db.session.commit()
        add_task(ann)  # the first one has ended: a new export may start
        assert len(task_rows(ann)) == 3


def test_simultaneous_export_clicks_by_one_user_start_one_task(app):
    with app.app_context():
        ann = add_user("ann")
    browsers = []
    for _ in range(8):
        browser = logged_in(app, "ann")
        browsers.append((browser, csrf_token_in(browser.get("/user/ann").get_data(as_text=True))))
    barrier = threading.Barrier(len(browsers))
    responses: list = [None] * len(browsers)
    errors: list[BaseException] = []

    def click(n: int) -> None:
        browser, token = browsers[n]
        try:
            barrier.wait(timeout=30)
            responses[n] = browser.post("/export_posts", data={"csrf_token": token})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(n,)) for n in range(len(browsers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert [r.status_code for r in responses] == [302] * len(browsers), [
        r.get_data(as_text=True)[:500] for r in responses if r.status_code != 302]
    with app.app_context():
        (row,) = task_rows(ann)
        assert row.name == EXPORT_TASK_NAME and row.finished is None
    pages = [browser.get("/user/ann").get_data(as_text=True) for browser, _ in browsers]
    assert sum("Your export has started" in page for page in pages) == 1
    assert sum("Already in progress" in page for page in pages) == len(browsers) - 1


# --- 7. download_export ----------------------------------------------------------------


@pytest.fixture
def ann_and_bob(app) -> tuple[int, int]:
    with app.app_context():
        ann, bob = add_user("ann"), add_user("bob")
        add_posts(ann, ("ann's post", utcnow()))
        return ann, bob


def test_the_owner_downloads_the_export_as_an_attachment(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = finished_export(ann)
        content = json.loads((exports_dir() / export_file_name(task_id)).read_bytes())
    response = logged_in(app, "ann").get(f"/exports/{task_id}")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert "ann-posts.json" in response.headers["Content-Disposition"]
    assert response.mimetype == "application/json"
    assert json.loads(response.data) == content
    assert [post["body"] for post in content["posts"]] == ["ann's post"]


def test_another_users_export_is_404(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = finished_export(ann)
    assert logged_in(app, "bob").get(f"/exports/{task_id}").status_code == 404


def test_a_task_that_is_not_an_export_has_no_download(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = finished_export(ann, name="ping")  # even with a file where an export's would be
    assert logged_in(app, "ann").get(f"/exports/{task_id}").status_code == 404


def test_an_unfinished_export_is_409_with_a_reason(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=50)
    response = logged_in(app, "ann").get(f"/exports/{task_id}")
    assert response.status_code == 409
    assert "not ready yet" in response.get_data(as_text=True)


def test_an_export_whose_file_was_deleted_is_410_gone_with_a_reason(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = finished_export(ann)
        (exports_dir() / export_file_name(task_id)).unlink()
    response = logged_in(app, "ann").get(f"/exports/{task_id}")
    assert response.status_code == 410
    page = response.get_data(as_text=True)
    assert "expired" in page and "new export" in page


@pytest.fixture
def relative_exports_app(make_app, tmp_path, monkeypatch):
    """EXPORTS_DIR given as a relative path, the process working somewhere else."""
    working = tmp_path / "elsewhere"
    working.mkdir()
    monkeypatch.chdir(working)
    return make_app(EXPORTS_DIR="exports")


def test_a_relative_exports_dir_is_in_the_instance_folder_and_downloads(relative_exports_app, tmp_path):
    app = relative_exports_app
    with app.app_context():
        add_posts(add_user("ann"), ("ann's post", utcnow()))
        task_id = finished_export(db.session.scalar(sa.select(User.id).where(User.username == "ann")))
    assert (Path(app.instance_path) / "exports" / export_file_name(task_id)).is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    response = logged_in(app, "ann").get(f"/exports/{task_id}")
    assert response.status_code == 200
    assert json.loads(response.data)["posts"][0]["body"] == "ann's post"


# --- 8. cleanup_exports ----------------------------------------------------------------


def test_cleanup_removes_expired_export_files_and_keeps_recent_ones(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        retention = timedelta(days=app.config["EXPORT_RETENTION_DAYS"])
        old = finished_export(ann, finished=utcnow() - retention - timedelta(hours=1))
        recent = finished_export(ann, finished=utcnow() - retention + timedelta(hours=1))
        report = cleanup_exports()
        assert report.files_removed == 1
        assert not (exports_dir() / export_file_name(old)).exists()
        assert (exports_dir() / export_file_name(recent)).exists()
    auth = logged_in(app, "ann")
    assert auth.get(f"/exports/{old}").status_code == 410
    assert auth.get(f"/exports/{recent}").status_code == 200


def test_cleanup_removes_stale_temporary_files_only(app):
    with app.app_context():
        directory = exports_dir()
        directory.mkdir(parents=True)
        stale, fresh = directory / ".posts-old.json.123.tmp", directory / ".posts-new.json.456.tmp"
        stale.write_text('{"posts": [')
        fresh.write_text('{"posts": [')
        day_ago = time.time() - 24 * 3600 - 60
        os.utime(stale, (day_ago, day_ago))
        report = cleanup_exports()
        assert report.temporary_files_removed == 1
        assert not stale.exists() and fresh.exists()


def test_cleanup_fails_tasks_stuck_past_the_time_limit(app, ann_and_bob):
    ann, bob = ann_and_bob
    with app.app_context():
        limit = timedelta(seconds=app.config["CELERY_TASK_TIME_LIMIT"] + 600)
        stuck = add_task(ann, state=TaskState.PROGRESS, progress=30,
                         created=utcnow() - limit - timedelta(minutes=1))
        running = add_task(bob, state=TaskState.PROGRESS, progress=30,
                           created=utcnow() - timedelta(minutes=5))
        report = cleanup_exports()
        assert report.stale_tasks_failed == 1
        stuck_row, running_row = fresh_task(stuck), fresh_task(running)
    assert stuck_row.state == TaskState.FAILURE and stuck_row.finished is not None
    assert stuck_row.error and "did not finish" in stuck_row.error
    assert (running_row.state, running_row.progress, running_row.finished, running_row.error) == (
        TaskState.PROGRESS, 30, None, None)


def test_flask_cleanup_exports_prints_what_it_did(app, runner, ann_and_bob):
    ann, bob = ann_and_bob
    with app.app_context():
        finished_export(ann, finished=utcnow() - timedelta(days=app.config["EXPORT_RETENTION_DAYS"] + 1))
        stray = exports_dir() / ".posts-x.json.1.tmp"
        stray.write_text("")
        os.utime(stray, (0, 0))
        add_task(bob, created=utcnow() - timedelta(days=1))

    result = runner.invoke(args=["cleanup-exports"])

    assert result.exit_code == 0, result.output
    assert ("Removed 1 expired export(s) and 1 temporary file(s); "
            "marked 1 stuck task(s) as failed") in result.output
    assert runner.invoke(args=["cleanup-exports"]).output.count(" 0 ") == 3  # nothing left to do


def test_celery_beat_runs_the_cleanup(app):
    from app.extensions import celery

    entries = [entry for entry in celery.conf.beat_schedule.values()
               if entry["task"] == "app.tasks.cleanup_exports"]
    assert len(entries) == 1
    schedule = entries[0]["schedule"]
    seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)
    assert 0 < seconds <= 24 * 3600
    assert "app.tasks.cleanup_exports" in celery.tasks


# --- 9. live progress markup -----------------------------------------------------------


def task_alert(page: str, task_id: str) -> str | None:
    match = re.search(
        r'<div class="[^"]*\btask-alert\b[^"]*"[^>]*data-status-url="/tasks/' + re.escape(task_id)
        + r'"[^>]*>(.*?</div>\s*</div>)', page, re.S)
    return match.group(1) if match else None


@pytest.mark.parametrize("path", ["/", "/user/ann", "/user/bob"])
def test_a_running_task_is_shown_live_on_every_page(app, ann_and_bob, path):
    ann, bob = ann_and_bob
    with app.app_context():
        task_id = add_task(ann, description="Exporting posts...", state=TaskState.PROGRESS, progress=42)
    page = logged_in(app, "ann").get(path).get_data(as_text=True)

    alert = task_alert(page, task_id)
    assert alert is not None, page
    assert "Exporting posts..." in alert and "42%" in alert
    assert re.search(r'class="progress"[^>]*aria-valuenow="42"', alert)
    assert '<div class="progress-bar"></div>' in alert  # sized by tasks.js: CSP allows no style attribute
    assert '<script src="/static/tasks.js"' in page


def test_the_live_progress_script_is_served(client):
    response = client.get("/static/tasks.js")
    assert response.status_code == 200
    assert "data-status-url" in response.get_data(as_text=True)


def test_without_running_tasks_no_progress_is_shown(app, ann_and_bob):
    ann, bob = ann_and_bob
    with app.app_context():
        finished_export(ann)  # ended: not shown
        others = add_task(bob, state=TaskState.PROGRESS, progress=5)  # someone else's: not shown
    auth = logged_in(app, "ann")
    for path in ("/", "/user/ann", "/user/bob"):
        page = auth.get(path).get_data(as_text=True)
        assert "task-alert" not in page and "data-status-url" not in page
        assert others not in page
    assert task_alert(logged_in(app, "bob").get("/").get_data(as_text=True), others) is not None


# --- 10. task_status JSON ---------------------------------------------------------------


def test_task_status_has_exactly_the_documented_keys(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=12, done=36_000, total=300_000)
    status = logged_in(app, "ann").get(f"/tasks/{task_id}").get_json()
    assert set(status) == {"id", "name", "description", "state", "progress", "done", "total", "error",
                           "download_url"}
    assert (status["id"], status["state"], status["progress"], status["done"], status["total"],
            status["download_url"]) == (task_id, "PROGRESS", 12, 36_000, 300_000, None)


def test_task_status_counts_nothing_before_the_first_report(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = add_task(ann)
    status = logged_in(app, "ann").get(f"/tasks/{task_id}").get_json()
    assert (status["state"], status["done"], status["total"]) == ("PENDING", 0, None)


def test_task_status_offers_a_download_only_once_the_file_exists(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=99)
    auth = logged_in(app, "ann")
    assert auth.get(f"/tasks/{task_id}").get_json()["download_url"] is None

    with app.app_context():  # the name is recorded, but the file is not there (yet, or any more)
        row = db.session.get(Task, task_id)
        row.result_location = export_file_name(task_id)
        db.session.commit()
        name = row.result_location
    assert auth.get(f"/tasks/{task_id}").get_json()["download_url"] is None

    with app.app_context():
        write_posts_export(ann, name, no_progress)
    assert auth.get(f"/tasks/{task_id}").get_json()["download_url"] == f"/exports/{task_id}"


def test_a_failed_export_without_a_file_is_404_with_a_reason(app, ann_and_bob):
    ann, _ = ann_and_bob
    with app.app_context():
        from app.models import finish_task

        task_id = add_task(ann)
        finish_task(task_id, error="We could not write your export file. Please try again later.")
    response = logged_in(app, "ann").get(f"/exports/{task_id}")
    assert response.status_code == 404 and "failed and has no file" in response.get_data(as_text=True)


def test_cleanup_removes_orphan_export_files_after_the_retention(app):
    with app.app_context():
        directory = exports_dir()
        directory.mkdir(parents=True, exist_ok=True)
        old, fresh = directory / "posts-orphan-old.json", directory / "posts-orphan-new.json"
        old.write_text("{}")
        fresh.write_text("{}")
        ten_days_ago = (utcnow() - timedelta(days=10)).timestamp()
        os.utime(old, (ten_days_ago, ten_days_ago))
        report = cleanup_exports()
    assert not old.exists() and fresh.exists() and report.files_removed == 1


def test_the_audit_hook_logs_instead_of_failing_when_the_user_is_gone(app, caplog):
    from app import audit

    with app.app_context():
        ann = add_user("ann")
    with app.test_request_context("/export_posts", method="POST"):
        login_user(db.session.get(User, ann))
        audit.record("export_posts", "1 post")
        with db.engine.begin() as connection:  # the account disappears meanwhile
            connection.execute(sa.delete(User).where(User.id == ann))
        response = app.process_response(app.response_class())
    assert response.status_code == 200
    assert "Could not write audit events ['export_posts']" in caplog.text
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(AuditEvent.id))) == 0


# --- 6. the lease on a running export ----------------------------------------------------


def test_a_run_that_finds_the_export_leased_stands_back_until_the_lease_ends(app, mail_sink):
    from app.exports import ExportLeased
    from app.jobs import release_lease, take_lease

    with app.app_context():
        ann = add_user("ann")
        add_posts(ann, ("a post", utcnow()))
        task_id = add_task(ann)
        first = take_lease(task_id, 30)  # another run is at work
        assert isinstance(first, str)
        assert 29 <= take_lease(task_id, 30) <= 30  # a second one may not take it

    with pytest.raises(ExportLeased) as refused:
        export_in_request(app, task_id, ann)
    assert 29 <= refused.value.retry_in <= 30
    assert mail_sink.messages == []
    with app.app_context():
        assert fresh_task(task_id).finished is None  # left to the run that holds it
        release_lease(task_id, first)

    assert export_in_request(app, task_id, ann) == export_file_name(task_id)
    mail_sink.wait_for(1)
    with app.app_context():
        row = fresh_task(task_id)
        assert row.state == TaskState.SUCCESS and row.lease_owner is None and row.lease_expires is None


def test_an_expired_lease_is_taken_over(app, mail_sink):
    from app.jobs import take_lease

    with app.app_context():
        ann = add_user("ann")
        task_id = add_task(ann)
        assert isinstance(take_lease(task_id, -1), str)  # a run that died, its lease already over
    assert export_in_request(app, task_id, ann) == export_file_name(task_id)
    mail_sink.wait_for(1)
