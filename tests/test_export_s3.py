"""Exports in an S3-compatible store, web and worker sharing no disk (issue #16).

A stack of this module's own: a real web server (gunicorn) and a real worker, each with an
``EXPORTS_DIR`` of its own, both with ``EXPORTS_STORAGE_URL=s3://<bucket>/exports`` and
boto3's ``AWS_*`` variables pointing at moto's S3 server, a real process on 127.0.0.1.
A user exports through HTTP; the email arrives; the download, answered by the web
process, is a redirect to the store that gives the file.
"""
from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.exports import EXPORT_TASK_NAME, cleanup_exports
from app.extensions import celery, db
from app.models import Task, TaskState, User, utcnow
from config import TestingConfig
from tests.conftest import LIVE_MAX_ATTACHMENT_BYTES, base_environ, csrf_token_in
from tests.support.s3 import S3Server
from tests.support.services import WorkerProcess, flask_db, process_environ, wait_until
from tests.support.web import Browser, Server, running_gunicorn
from tests.test_export_flow import EXPORT_SUBJECT, _links

PASSWORD = "correct horse"


@dataclass
class S3Stack:
    app: Flask  # this process's view of the database
    environ: dict[str, str]
    web: Server
    s3: S3Server
    bucket: str
    web_exports: Path
    worker_exports: Path

    def key(self, task_id: str) -> str:
        return f"exports/posts-{task_id}.json"

    def stored(self, task_id: str) -> bool:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=self.key(task_id))
        return bool(listed.get("Contents"))

    def browser(self) -> Browser:
        return Browser(self.web.base_url)


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, redis_service, smtp_server, s3_server):
    directory = tmp_path_factory.mktemp("s3-stack")
    redis_db = redis_service.fresh_db()
    bucket = s3_server.new_bucket()
    environ = base_environ(directory, redis_service, smtp_server, f"sqlite:///{directory / 's3.db'}",
                           redis_db)
    environ.update(EXPORTS_STORAGE_URL=f"s3://{bucket}/exports",
                   MAIL_MAX_ATTACHMENT_BYTES=str(LIVE_MAX_ATTACHMENT_BYTES))
    web_exports, worker_exports = directory / "web-exports", directory / "worker-exports"
    web_environ = {**environ, **s3_server.environ(), "EXPORTS_DIR": str(web_exports)}
    worker_environ = {**environ, **s3_server.environ(), "EXPORTS_DIR": str(worker_exports)}
    flask_db(environ, "upgrade")
    app = create_app(TestingConfig(environ))  # also binds the test process's Celery app to this stack
    worker = WorkerProcess(process_environ(worker_environ), directory / "worker.log", concurrency=1)
    worker.start(celery)
    try:
        with running_gunicorn(app, web_environ, directory / "web.log") as web:
            yield S3Stack(app, environ, web, s3_server, bucket, web_exports, worker_exports)
    finally:
        worker.stop()
        with app.app_context():
            db.engine.dispose()


def signed_up(stack: S3Stack, username: str) -> Browser:
    browser = stack.browser()
    token = csrf_token_in(browser.get("/auth/register").body)
    reply = browser.post("/auth/register", {"username": username, "email": f"{username}@example.com",
                                            "password": PASSWORD, "password2": PASSWORD, "csrf_token": token})
    assert reply.status == 302, reply.body[:500]
    token = csrf_token_in(browser.get("/auth/login").body)
    reply = browser.post("/auth/login", {"username": username, "password": PASSWORD, "csrf_token": token})
    assert reply.status == 302, reply.body[:500]
    return browser


def post_form(browser: Browser, path: str, data: dict, page: str) -> int:
    token = csrf_token_in(browser.get(page).body)
    return browser.post(path, {**data, "csrf_token": token}).status


def user_id(stack: S3Stack, username: str) -> int:
    with stack.app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.username == username))


def export_and_wait(stack: S3Stack, browser: Browser, username: str) -> str:
    """Press Export on the profile page, and wait for the task to succeed; its id."""
    assert post_form(browser, "/export_posts", {}, f"/user/{username}") == 302
    with stack.app.app_context():
        task_id = db.session.scalar(sa.select(Task.id).where(Task.user_id == user_id(stack, username))
                                    .order_by(Task.created.desc()))

    def finished():
        status = browser.get(f"/tasks/{task_id}").json()
        return status if status["state"] in (TaskState.SUCCESS, TaskState.FAILURE) else None

    status = wait_until(finished, 60, interval=0.1, message=f"export {task_id} to finish")
    assert (status["state"], status["error"]) == ("SUCCESS", None)
    assert status["download_url"] == f"/exports/{task_id}"
    return task_id


def follow_to_the_store(stack: S3Stack, browser: Browser, task_id: str):
    """GET /exports/<id> from the web process: a redirect to the store; the store's reply."""
    reply = browser.get(f"/exports/{task_id}")
    assert reply.status == 302, (reply.status, reply.body[:500])
    link = reply.headers["Location"]
    assert link.startswith(f"{stack.s3.endpoint_url}/{stack.bucket}/{stack.key(task_id)}?"), link
    assert reply.headers["Cache-Control"] == "no-store"
    return urllib.request.urlopen(link, timeout=30)  # no cookie: the link alone gives the file


def local_files(*directories: Path) -> list[Path]:
    return [path for directory in directories if directory.exists() for path in directory.rglob("*")]


def test_web_and_worker_without_a_common_disk_export_through_the_store(s3_stack, mail_sink):
    stack = s3_stack
    ann = signed_up(stack, "ann")
    bodies = ["first post", "second, with \"quotes\" and ✓", "third\nline"]
    for body in bodies:
        assert post_form(ann, "/index", {"post": body}, "/") == 302

    task_id = export_and_wait(stack, ann, "ann")

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert message.recipients == ["ann@example.com"]
    text = message.message.get_body(("plain",)).get_content()
    assert f"{stack.web.base_url}exports/{task_id}" in _links(text)
    (attachment,) = message.message.iter_attachments()  # the worker read it back from the store
    attached = json.loads(attachment.get_content())
    assert [post["body"] for post in attached["posts"]] == bodies

    with follow_to_the_store(stack, ann, task_id) as stored:
        assert stored.headers["Content-Disposition"] == "attachment; filename=ann-posts.json"
        assert stored.headers["Content-Type"] == "application/json"
        assert json.loads(stored.read()) == attached

    assert stack.stored(task_id)
    assert local_files(stack.web_exports, stack.worker_exports) == []  # neither process kept a copy

    bob = signed_up(stack, "bob")
    assert bob.get(f"/exports/{task_id}").status == 404
    assert bob.get(f"/tasks/{task_id}").status == 404


def test_an_export_above_the_attachment_limit_goes_up_in_parts_and_downloads_whole(s3_stack, mail_sink):
    stack = s3_stack
    cat = signed_up(stack, "cat")
    posts = 150_000  # about 9 MB: two parts of the 8 MiB multipart upload
    with stack.app.app_context():
        from app.cli import seed_posts

        seed_posts(db.session.get(User, user_id(stack, "cat")), posts)

    task_id = export_and_wait(stack, cat, "cat")

    (message,) = mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert list(message.message.iter_attachments()) == []
    assert "too large to attach" in message.message.get_body(("plain",)).get_content()
    head = stack.s3.client().head_object(Bucket=stack.bucket, Key=stack.key(task_id))
    assert head["ETag"].strip('"').endswith("-2"), head["ETag"]
    with follow_to_the_store(stack, cat, task_id) as stored:
        exported = json.loads(stored.read())["posts"]
    assert len(exported) == posts
    assert exported[0]["body"] == "Post 1 by cat" and exported[-1]["body"] == f"Post {posts} by cat"
    assert local_files(stack.web_exports, stack.worker_exports) == []


def test_an_export_being_written_is_409(s3_stack):
    stack = s3_stack
    dan = signed_up(stack, "dan")
    task_id = str(uuid4())
    with stack.app.app_context():  # a run part-way through: no file recorded yet
        db.session.add(Task(id=task_id, name=EXPORT_TASK_NAME, description="Exporting posts...",
                            user_id=user_id(stack, "dan"), state=TaskState.PROGRESS, progress=40))
        db.session.commit()
    reply = dan.get(f"/exports/{task_id}")
    assert reply.status == 409 and "not ready yet" in reply.body
    assert dan.get(f"/tasks/{task_id}").json()["download_url"] is None


def test_an_expired_export_is_deleted_from_the_store_and_then_410(s3_stack, mail_sink, monkeypatch):
    stack = s3_stack
    eve = signed_up(stack, "eve")
    assert post_form(eve, "/index", {"post": "soon gone"}, "/") == 302
    task_id = export_and_wait(stack, eve, "eve")
    mail_sink.wait_for(1, subject=EXPORT_SUBJECT)
    assert stack.stored(task_id)

    # The cleanup as beat or `flask cleanup-exports` runs it, from a process of its own
    # configuration (this one, with boto3's variables), some days later.
    for name, value in stack.s3.environ().items():
        monkeypatch.setenv(name, value)
    cleaner = create_app(TestingConfig(stack.environ))
    with cleaner.app_context():
        later = utcnow() + timedelta(days=cleaner.config["EXPORT_RETENTION_DAYS"], hours=1)
        report = cleanup_exports(now=later)
        db.engine.dispose()
    assert report.files_removed >= 1
    assert not stack.stored(task_id)

    reply = eve.get(f"/exports/{task_id}")
    assert reply.status == 410 and "expired" in reply.body
    assert eve.get(f"/tasks/{task_id}").json()["download_url"] is None
