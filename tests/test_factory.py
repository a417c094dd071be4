"""app/__init__.py: create_app builds independent apps; the latest one binds Celery."""
import pytest
import sqlalchemy as sa
from flask_login import LoginManager

import config
from app import create_app
from app.extensions import celery, csrf, db, login, migrate
from app.models import User
from tests.conftest import AuthActions


@pytest.fixture
def make_named_app(app_environ, tmp_path):
    """Build apps on their own database files; dispose of their engines afterwards."""
    apps = []

    def make(name: str, **overrides: str):
        environ = {**app_environ, "DATABASE_URL": f"sqlite:///{tmp_path / name}.db", **overrides}
        app = create_app(config.TestingConfig(environ))
        with app.app_context():
            db.create_all()
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def usernames(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(User.username).order_by(User.username)))


def test_two_apps_use_their_own_databases(make_named_app):
    one, two = make_named_app("one"), make_named_app("two")
    AuthActions(one.test_client()).register("susan")
    AuthActions(two.test_client()).register("bob")
    assert usernames(one) == ["susan"]
    assert usernames(two) == ["bob"]


def test_the_same_username_can_register_in_each_app(make_named_app):
    one, two = make_named_app("one"), make_named_app("two")
    assert AuthActions(one.test_client()).register("susan").status_code == 302
    assert AuthActions(two.test_client()).register("susan").status_code == 302


def test_a_user_of_one_app_cannot_log_in_to_the_other(make_named_app):
    one, two = make_named_app("one"), make_named_app("two")
    AuthActions(one.test_client()).register("susan")
    assert AuthActions(one.test_client()).login("susan").status_code == 302
    assert AuthActions(two.test_client()).login("susan").status_code == 401


def test_both_apps_serve_pages_interleaved(make_named_app):
    one, two = make_named_app("one"), make_named_app("two")
    auth_one, auth_two = AuthActions(one.test_client()), AuthActions(two.test_client())
    auth_one.signup("susan")
    auth_two.signup("bob")
    auth_one.post_form("/", {"post": "in one"})
    auth_two.post_form("/", {"post": "in two"})
    page_one = auth_one.client.get("/").get_data(as_text=True)
    page_two = auth_two.client.get("/").get_data(as_text=True)
    assert "in one" in page_one and "in two" not in page_one
    assert "in two" in page_two and "in one" not in page_two


def test_the_latest_app_binds_celery(make_named_app):
    one = make_named_app("one")
    assert celery.flask_app is one
    two = make_named_app("two", REDIS_URL="redis://second-broker.example:6379/0")
    assert celery.flask_app is two
    assert celery.conf.broker_url == "redis://second-broker.example:6379/0"


def test_the_first_app_still_serves_after_celery_is_rebound(make_named_app):
    one = make_named_app("one")
    auth_one = AuthActions(one.test_client())
    auth_one.signup("susan")
    make_named_app("two")
    assert celery.flask_app is not one
    response = auth_one.post_form("/", {"post": "still here"})
    assert response.status_code == 302
    assert "still here" in auth_one.client.get("/").get_data(as_text=True)
    assert usernames(one) == ["susan"]


def test_each_app_keeps_its_own_carrier_state(make_named_app):
    one, two = make_named_app("one", SECRET_KEY="first-secret-0123456789"), make_named_app("two")
    assert one.extensions["flask_celery_request"] is not two.extensions["flask_celery_request"]


def test_extensions_are_registered(app):
    assert app.extensions["sqlalchemy"] is db
    assert app.extensions["migrate"].db is db
    assert app.extensions["migrate"].migrate is migrate
    assert app.extensions["csrf"] is csrf
    assert app.extensions["mail"].default_sender == app.config["MAIL_DEFAULT_SENDER"]
    assert app.extensions["celery"] is celery
    assert "flask_celery_request" in app.extensions
    assert isinstance(login, LoginManager) and app.login_manager is login


def test_blueprints_are_registered(app):
    assert {"auth", "main", "errors"} <= set(app.blueprints)


def test_cli_command_is_registered(app):
    assert "seed-posts" in app.cli.list_commands(None)


def test_create_app_with_a_config_class_reads_the_process_environment(app_environ, monkeypatch):
    for name, value in app_environ.items():
        monkeypatch.setenv(name, value)
    app = create_app(config.TestingConfig)
    try:
        assert app.testing
        assert app.config["SQLALCHEMY_DATABASE_URI"] == app_environ["DATABASE_URL"]
    finally:
        with app.app_context():
            db.engine.dispose()


def test_create_app_without_arguments_follows_microblog_config(app_environ, monkeypatch):
    for name, value in app_environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MICROBLOG_CONFIG", "testing")
    app = create_app()
    try:
        assert app.testing
    finally:
        with app.app_context():
            db.engine.dispose()
