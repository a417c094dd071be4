"""Promise: a mail outage during an export loses nothing.

The file is kept, the email is retried with backoff and delivered when the SMTP server
returns; if it never returns, the export ends in FAILURE with a message that still
offers the download on the site.
"""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Task, TaskState, User
from tests.conftest import AuthActions, empty_database
from tests.support.services import wait_until
from tests.support.stacks import MailControlledStack

SITE = "https://mail-outage.example/"
SUBJECT = "Your posts are ready"


@pytest.fixture(scope="module")
def stack(live_stack, redis_service, tmp_path_factory):
    stack = MailControlledStack(live_stack.environ, redis_service, tmp_path_factory.mktemp("mail-outage"),
                                WELCOME_EMAIL_DELAY="3600")
    yield stack
    stack.stop()


@pytest.fixture
def app(stack):
    app = stack.app()
    yield app
    stack.stop_smtp()
    empty_database(app)


def _start_export(app, username: str) -> tuple[AuthActions, str]:
    auth = AuthActions(app.test_client(), base_url=SITE)
    auth.signup(username)
    for body in ("one", "two"):
        auth.post_form("/index", {"post": body})
    assert auth.post_form("/export_posts", page=f"/user/{username}").status_code == 302
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        return auth, db.session.scalar(user.tasks.select().where(Task.name == "export_posts")).id


def _status(auth: AuthActions, task_id: str) -> dict:
    return auth.get(f"/tasks/{task_id}").get_json()


def test_the_email_is_retried_and_delivered_when_the_smtp_server_returns(app, stack):
    auth, task_id = _start_export(app, "olga")

    delayed = wait_until(lambda: (s := _status(auth, task_id))["error"] and s, 30,
                         message="the export to report its email delayed")
    assert delayed["state"] != TaskState.SUCCESS and delayed["progress"] == 100
    assert "ready to download" in delayed["error"] and delayed["download_url"]
    kept = auth.get(delayed["download_url"])
    assert kept.status_code == 200 and len(json.loads(kept.data)["posts"]) == 2  # the file is kept

    sink = stack.start_smtp()  # the mail server returns
    (message,) = sink.wait_for(1, timeout=30, subject=SUBJECT)
    assert f"{SITE}exports/{task_id}" in message.message.get_body(("plain",)).get_content()
    done = wait_until(lambda: (s := _status(auth, task_id))["state"] == TaskState.SUCCESS and s, 30,
                      message="the export to succeed")
    assert done["error"] is None
    log = stack.worker.log()
    assert "emailing olga@example.com failed" in log and "will retry" in log
    assert len(sink.received(SUBJECT)) == 1


def test_if_the_smtp_server_never_returns_the_export_fails_but_stays_downloadable(app, stack):
    auth, task_id = _start_export(app, "pavel")
    failed = wait_until(lambda: (s := _status(auth, task_id))["state"] == TaskState.FAILURE and s, 60,
                        message="the export to give up on the email")
    assert failed["error"] == ("Your export is ready to download from this site, "
                               "but we could not send you the email about it.")
    assert failed["download_url"] == f"/exports/{task_id}"
    assert len(json.loads(auth.get(failed["download_url"]).data)["posts"]) == 2
    assert stack.worker.log().count("emailing pavel@example.com failed") == 3  # 4 attempts in all
