"""``DATABASE_URL`` for PostgreSQL: the URL forms operators are handed all reach psycopg 3."""
from __future__ import annotations

import sqlalchemy as sa

from app import create_app
from app.extensions import db
from config import TestingConfig, database_url


def test_bare_postgres_urls_get_the_installed_psycopg_3_driver():
    assert database_url("postgres://u:p@db:5432/blog", "sqlite://") == "postgresql+psycopg://u:p@db:5432/blog"
    assert database_url("postgresql://u@db/blog", "sqlite://") == "postgresql+psycopg://u@db/blog"
    assert database_url("postgresql+psycopg2://u@db/blog", "sqlite://") == "postgresql+psycopg2://u@db/blog"
    assert database_url("sqlite:///x.db", "sqlite://") == "sqlite:///x.db"
    assert database_url(None, "sqlite://") == database_url("", "sqlite://") == "sqlite://"


def test_a_bare_postgresql_url_reaches_the_server_and_the_health_check_says_so(pg_stack):
    url = pg_stack.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    app = create_app(TestingConfig({**pg_stack.environ, "DATABASE_URL": url}))
    try:
        with app.app_context():
            assert (db.engine.dialect.name, db.engine.driver) == ("postgresql", "psycopg")
            assert db.session.scalar(sa.text("SELECT current_setting('server_version_num')::int")) >= 120000
        health = app.test_client().get("/healthz").get_json()
        assert health["checks"]["database"]["ok"], health
    finally:
        with app.app_context():
            db.engine.dispose()
