"""celery beat, for real: it runs the export cleanup and re-sends stalled emails.

A real ``celery beat`` process with short periods (EXPORT_CLEANUP_INTERVAL,
EMAIL_REQUEUE_INTERVAL) sends the periodic tasks to a real worker of this module's
own (on a Redis database of its own and the live database). Tasks started by beat
have no request: their links come from SERVER_NAME and PREFERRED_URL_SCHEME, while an
email whose request was recorded is built in that request (here its https scheme; with
SERVER_NAME set, Flask puts every external link on SERVER_NAME, in views and tasks alike).
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.exports import EXPORT_TASK_NAME
from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, Task, TaskState, User, utcnow
from tests.conftest import AuthActions, empty_database
from tests.support.services import BeatProcess, wait_until
from tests.support.stacks import MailControlledStack
from tests.test_welcome import SUBJECT, _links

SERVER_NAME = "beat.example.org"
#: Nothing listens there: an enqueue fails fast, as when the broker is down.
DEAD_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def beat_stack(live_stack, redis_service, tmp_path_factory):
    directory = tmp_path_factory.mktemp("beat")
    stack = MailControlledStack(
        live_stack.environ, redis_service, directory,
        SERVER_NAME=SERVER_NAME, PREFERRED_URL_SCHEME="http",
        EXPORT_CLEANUP_INTERVAL="0.5", EMAIL_REQUEUE_INTERVAL="0.5",
        EXPORTS_DIR=str(directory / "exports"),
    )
    beat = BeatProcess(stack.worker.env, directory)
    yield stack, beat
    beat.stop()
    stack.stop()


@pytest.fixture
def beat_app(beat_stack):
    stack, _ = beat_stack
    app = stack.app()
    yield app
    empty_database(app)
    with app.app_context():
        db.engine.dispose()


def _write_export(app, user_id: int, name: str, finished_days_ago: float) -> Path:
    with app.app_context():
        directory = Path(app.config["EXPORTS_DIR"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text('{"posts": []}')
        db.session.add(Task(
            id=f"beat-{name}", name=EXPORT_TASK_NAME, description="Exporting posts", user_id=user_id,
            state=TaskState.SUCCESS, progress=100, result_location=name,
            finished=utcnow() - timedelta(days=finished_days_ago),
        ))
        db.session.commit()
        return directory / name


def test_beat_runs_the_export_cleanup(beat_app, beat_stack):
    _, beat = beat_stack
    with beat_app.app_context():
        user = User(username="olga", email="olga@example.com")
        user.set_password("correct horse")
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    retention = beat_app.config["EXPORT_RETENTION_DAYS"]
    expired = _write_export(beat_app, user_id, "posts-expired.json", retention + 1)
    fresh = _write_export(beat_app, user_id, "posts-fresh.json", 0)

    wait_until(lambda: not expired.exists(), 30, message=f"beat's cleanup to remove the expired export\n{beat.log()}")
    assert fresh.exists()
    assert "Sending due task cleanup-exports (app.tasks.cleanup_exports)" in beat.log()


def test_beat_resends_stalled_emails_built_from_settings_or_the_recorded_request(beat_stack):
    stack, _ = beat_stack
    # The broker is down when both users are created: their emails stay pending.
    offline = stack.app(CELERY_BROKER_URL=DEAD_BROKER)
    try:
        with offline.app_context():  # no request: from the CLI or a shell
            db.session.add(User(username="cli_carl", email="carl@example.com", password_hash="x"))
            db.session.commit()
        auth = AuthActions(offline.test_client(), base_url=f"https://{SERVER_NAME}/")
        assert auth.register("web_wanda").status_code == 302
        with offline.app_context():
            rows = db.session.scalars(sa.select(EmailDelivery)).all()
            assert sorted((r.recipient, r.status, r.request_context is None) for r in rows) == [
                ("carl@example.com", DeliveryStatus.PENDING, True),
                ("web_wanda@example.com", DeliveryStatus.PENDING, False),
            ]
            # Stalled: well past their eta and the grace period beat waits for.
            db.session.execute(sa.update(EmailDelivery).values(created=utcnow() - timedelta(hours=1)))
            db.session.commit()
        stack.app()  # the broker is back
        sink = stack.start_smtp()
        messages = {m.message["To"]: m for m in sink.wait_for(2, timeout=60, subject=SUBJECT)}
        carl_links = _links(messages["carl@example.com"])
        wanda_links = _links(messages["web_wanda@example.com"])
        # No request: SERVER_NAME and PREFERRED_URL_SCHEME. Wanda's request came over https.
        assert carl_links and all(link.startswith(f"http://{SERVER_NAME}/") for link in carl_links)
        assert wanda_links and all(link.startswith(f"https://{SERVER_NAME}/") for link in wanda_links)
    finally:
        empty_database(stack.app())
