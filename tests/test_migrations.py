"""migrations/: ``flask db upgrade`` builds the schema the models describe, and undoes it."""
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET_KEY
from tests.support.services import ROOT

FLASK = str(Path(sys.executable).parent / "flask")
APP_TABLES = {"user", "post", "task"}


@pytest.fixture
def database(tmp_path) -> Path:
    return tmp_path / "m.db"


@pytest.fixture
def flask_db(tmp_path, database, redis_service):
    """Run ``flask --app celery_worker:app db ARGS`` as a user would, on ``database``."""
    env = {
        **os.environ,
        "MICROBLOG_CONFIG": "testing",
        "DATABASE_URL": f"sqlite:///{database}",
        "INSTANCE_PATH": str(tmp_path),
        "SECRET_KEY": TEST_SECRET_KEY,
        "FLASK_SKIP_DOTENV": "1",
        "REDIS_URL": redis_service.url,
    }
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "FLASK_APP"):
        env.pop(name, None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [FLASK, "--app", "celery_worker:app", "db", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    return run


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def indexes(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def test_upgrade_creates_the_tables(flask_db, database):
    flask_db("upgrade")
    assert APP_TABLES | {"alembic_version"} <= tables(database)
    assert {"ix_user_username", "ix_user_email", "ix_post_timestamp", "ix_task_user_id"} <= indexes(database)


def test_upgrade_records_the_head_revision(flask_db, database):
    flask_db("upgrade")
    heads = flask_db("heads").stdout.split()[0]
    with sqlite3.connect(database) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == heads


def test_models_and_migrations_agree(flask_db):
    flask_db("upgrade")
    result = flask_db("check")
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_check_fails_on_a_database_that_is_not_upgraded(flask_db):
    result = flask_db("check", check=False)
    assert result.returncode != 0
    assert "not up to date" in result.stdout + result.stderr


def test_downgrade_base_drops_the_tables(flask_db, database):
    flask_db("upgrade")
    flask_db("downgrade", "base")
    assert not APP_TABLES & tables(database)


def test_upgrade_reseals_outbox_contexts_of_the_earlier_signed_format(flask_db, database):
    """Pending emails queued before the upgrade keep their request (sealed anew);
    a context that does not verify is cleared, and sent emails keep none."""
    import json

    from flask import Flask
    from itsdangerous import Signer

    from flask_celery_request.settings import ContextSettings
    from flask_celery_request.transport import PREFIX, Sealer

    flask_db("upgrade", "e01dd2941fd8")
    context = {"v": 1, "e": {"HTTP_HOST": "blog.example:8443", "wsgi.url_scheme": "https", "PATH_INFO": "/auth/register"},
               "f": [["username", "susan"]]}
    signed = Signer([TEST_SECRET_KEY], salt="celery-with-context.v1").sign(json.dumps(context)).decode()
    forged = Signer(["another-secret-0123456789"], salt="celery-with-context.v1").sign(json.dumps(context)).decode()
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO email_delivery (kind, recipient, status, attempts, request_context, created, updated)"
            " VALUES ('welcome', ?, ?, 0, ?, '2026-12-01 10:00:00', '2026-12-01 10:00:00')",
            [("a@example.com", "pending", signed), ("b@example.com", "pending", forged),
             ("c@example.com", "sent", signed), ("d@example.com", "retrying", None)])
    flask_db("upgrade")
    with sqlite3.connect(database) as connection:
        stored = dict(connection.execute("SELECT recipient, request_context FROM email_delivery").fetchall())
    assert stored["b@example.com"] is None and stored["c@example.com"] is None and stored["d@example.com"] is None
    assert stored["a@example.com"].startswith(PREFIX)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = TEST_SECRET_KEY
    opened = Sealer([TEST_SECRET_KEY], ContextSettings.from_config(app.config)).open(stored["a@example.com"])
    assert opened == {key: value for key, value in context.items() if key != "v"}

    flask_db("downgrade", "e01dd2941fd8")
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT request_context FROM email_delivery WHERE recipient = 'a@example.com'"
                                  ).fetchone() == (None,)


def test_after_upgrade_a_deleted_delivery_s_id_is_never_given_again(flask_db, database):
    """A late task message names its delivery by id: a new row must never take it."""
    flask_db("upgrade")
    row = ("welcome", "a@example.com", "pending", 0, "2026-01-01 00:00:00", "2026-01-01 00:00:00")
    with sqlite3.connect(database) as connection:
        insert = ("INSERT INTO email_delivery (kind, recipient, status, attempts, created, updated) "
                  "VALUES (?, ?, ?, ?, ?, ?)")
        first = connection.execute(insert, row).lastrowid
        connection.execute("DELETE FROM email_delivery WHERE id = ?", (first,))
        second = connection.execute(insert, row).lastrowid
    assert second > first
