"""The export, from click to email, through HTTP with a real worker, Redis and SMTP server."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, Task, TaskState
from tests.conftest import LIVE_MAX_ATTACHMENT_BYTES, AuthActions
from tests.support.services import wait_until

SITE = "https://blog.example.org/"
EXPORT_SUBJECT = "Your posts are ready"


def _export_task(app, username: str) -> Task:
    from app.models import User

    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        return db.session.scalar(user.tasks.select().order_by(Task.created.desc()))


def _poll_until_finished(auth: AuthActions, task_id: str, timeout: float = 60) -> tuple[dict, list[int]]:
    seen: list[int] = []

    def finished():
        status = auth.get(f"/tasks/{task_id}").get_json()
        seen.append(status["progress"])
        return status if status["state"] in (TaskState.SUCCESS, TaskState.FAILURE) else None

    return wait_until(finished, timeout, interval=0.1, message=f"export {task_id} to finish"), seen


def _links(text: str) -> list[str]:
    return re.findall(r"https?://[^\s\"<>]+", text)


def test_export_from_click_to_email_to_download(live_app, live_stack, mail_sink):
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    auth.signup("ann")
    bodies = ["first post", "second, with \"quotes\" and ✓", "third\nline"]
    for body in bodies:
        assert auth.post_form("/index", {"post": body}).status_code == 302

    response = auth.post_form("/export_posts", page="/user/ann")
    assert response.status_code == 302 and response.headers["Location"].endswith("/user/ann")
    page = auth.get("/user/ann").get_data(as_text=True)
    assert "Your export has started" in page

    task = _export_task(live_app, "ann")
    status, progress = _poll_until_finished(auth, task.id)
    assert status["state"] == "SUCCESS" and status["progress"] == 100 and status["error"] is None
    assert progress == sorted(progress)
    assert status["download_url"] == f"/exports/{task.id}"

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert message.recipients == ["ann@example.com"]
    text = message.message.get_body(("plain",)).get_content()
    html = message.message.get_body(("html",)).get_content()
    download = f"{SITE}exports/{task.id}"
    profile = f"{SITE}user/ann"
    for body in (text, html):
        assert download in _links(body) and profile in _links(body)
        assert all(link.startswith(SITE) for link in _links(body))
    (attachment,) = list(message.message.iter_attachments())
    attached = json.loads(attachment.get_content())
    assert [post["body"] for post in attached["posts"]] == bodies  # oldest first
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["timestamp"]) for p in attached["posts"])

    downloaded = auth.get(f"/exports/{task.id}")
    assert downloaded.status_code == 200
    assert downloaded.headers["Content-Disposition"].startswith("attachment")
    assert json.loads(downloaded.data) == attached

    stranger = AuthActions(live_app.test_client(), base_url=SITE)
    stranger.signup("bob")
    assert stranger.get(f"/exports/{task.id}").status_code == 404
    assert stranger.get(f"/tasks/{task.id}").status_code == 404

    def audited():  # the hook writes when the task's replayed request ends, just after SUCCESS
        with live_app.app_context():
            return db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "export_posts"))

    wait_until(audited, 10, message="the worker's audit event")
    with live_app.app_context():
        events = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)).all()
        requested = [e for e in events if e.action == "export_posts_requested"]
        done = [e for e in events if e.action == "export_posts"]
        assert len(requested) == 1 and not requested[0].via_worker
        assert len(done) == 1 and done[0].via_worker and done[0].task_id == task.id
        assert done[0].host == "blog.example.org" and done[0].path == "/export_posts"
        assert done[0].remote_addr == "127.0.0.1" and json.loads(done[0].detail)["posts"] == 3
    activity = auth.get("/activity").get_data(as_text=True)
    assert "export posts" in activity and "(background)" in activity
    assert mail_sink.received(EXPORT_SUBJECT) == [message]  # exactly one export email


def test_export_above_the_attachment_limit_is_linked_not_attached(live_app, mail_sink):
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    auth.signup("cat")
    with live_app.app_context():
        from app.cli import seed_posts
        from app.models import User

        seed_posts(db.session.scalar(sa.select(User).where(User.username == "cat")), 5_000)
    auth.post_form("/export_posts", page="/user/cat")
    task = _export_task(live_app, "cat")
    status, _ = _poll_until_finished(auth, task.id)
    assert status["state"] == "SUCCESS"
    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    text = message.message.get_body(("plain",)).get_content()
    downloaded = auth.get(f"/exports/{task.id}").data
    assert len(downloaded) > LIVE_MAX_ATTACHMENT_BYTES
    assert len(json.loads(downloaded)["posts"]) == 5_000
    assert "too large to attach" in text and f"{SITE}exports/{task.id}" in text
    assert list(message.message.iter_attachments()) == []


@pytest.fixture
def unwritable_exports_dir(live_stack):
    """Put a plain file where the worker writes exports: every write fails."""
    exports = Path(live_stack.environ["EXPORTS_DIR"])
    parked = exports.with_name("exports.parked")
    if exports.exists():
        shutil.move(exports, parked)
    exports.parent.mkdir(parents=True, exist_ok=True)
    exports.write_text("not a directory")
    yield
    exports.unlink()
    if parked.exists():
        shutil.move(parked, exports)


def test_failed_export_ends_in_failure_with_a_message_and_no_email(live_app, live_stack, mail_sink,
                                                                   unwritable_exports_dir):
    auth = AuthActions(live_app.test_client(), base_url=SITE)
    auth.signup("dan")
    auth.post_form("/index", {"post": "a post"})
    auth.post_form("/export_posts", page="/user/dan")
    task = _export_task(live_app, "dan")
    status, _ = _poll_until_finished(auth, task.id)
    assert status["state"] == "FAILURE"
    assert status["error"] == "We could not write your export file. Please try again later."
    assert status["download_url"] is None
    assert mail_sink.received(EXPORT_SUBJECT) == []
    assert auth.get(f"/exports/{task.id}").status_code == 404  # failed: there is no file
    def logged():  # this export's own failure, with its traceback
        log = live_stack.worker.log()
        own = log[log.find(f"Export {task.id} for"):] if f"Export {task.id} for" in log else ""
        return "Traceback" in own and "could not write" in own

    wait_until(logged, 10, message="this export's failure and traceback in the worker log")
    with live_app.app_context():  # the slot is free again: a new export may start
        assert db.session.get(Task, task.id).finished is not None
        assert db.session.get(Task, task.id).user.task_in_progress("export_posts") is None
