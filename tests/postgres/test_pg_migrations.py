"""``flask db upgrade`` on PostgreSQL builds the schema the models describe, and undoes it."""
from __future__ import annotations

import pytest

from tests.conftest import base_environ
from tests.support.services import flask_db
from tests.support.postgres import PostgresServer

APP_TABLES = {"user", "post", "task", "audit_event", "email_delivery"}


@pytest.fixture
def fresh_database(postgres_server: PostgresServer, tmp_path, redis_service, smtp_server, unit_redis_db):
    """An empty database of its own, and the settings that point the app at it."""
    name = f"migrations_{tmp_path.name.lower().replace('-', '_')}"[:60]
    url = postgres_server.create_database(name)
    return name, base_environ(tmp_path, redis_service, smtp_server, url, unit_redis_db)


def _tables(server: PostgresServer, database: str) -> set[str]:
    with server.connect(database) as connection:
        rows = connection.execute("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = 'public'").fetchall()
    return {name for (name,) in rows}


def test_upgrade_builds_the_schema_check_finds_no_drift_and_downgrade_undoes_it(postgres_server,
                                                                              fresh_database):
    database, environ = fresh_database
    empty = flask_db(environ, "check", check=False)
    assert empty.returncode != 0 and "not up to date" in empty.stdout + empty.stderr

    flask_db(environ, "upgrade")
    assert APP_TABLES | {"alembic_version"} <= _tables(postgres_server, database)
    head = flask_db(environ, "heads").stdout.split()[0]
    with postgres_server.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)
        # The one-running-export rule is a partial unique index, as on SQLite.
        (definition,) = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_task_one_running_per_user'").fetchone()
        assert definition.startswith("CREATE UNIQUE INDEX") and "(user_id, name)" in definition
        assert definition.endswith("WHERE (finished IS NULL)")
        # Ids come from sequences (never reused); times are UTC without a zone on every engine.
        columns = dict(connection.execute(
            "SELECT table_name || '.' || column_name, data_type || ' ' || coalesce(column_default, '') "
            "FROM information_schema.columns WHERE table_schema = 'public'").fetchall())
    for table in ("user", "post", "audit_event", "email_delivery"):
        assert columns[f"{table}.id"] == f"integer nextval('{table}_id_seq'::regclass)"
    for column in ("user.created", "post.timestamp", "task.created", "task.finished",
                   "email_delivery.sent_at"):
        assert columns[column].strip() == "timestamp without time zone"

    result = flask_db(environ, "check")
    assert "No new upgrade operations detected" in result.stdout + result.stderr

    flask_db(environ, "downgrade", "base")
    assert not APP_TABLES & _tables(postgres_server, database)
    flask_db(environ, "upgrade")  # and back: the downgrade left nothing behind that gets in the way
    assert APP_TABLES <= _tables(postgres_server, database)
