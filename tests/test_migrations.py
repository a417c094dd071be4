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
