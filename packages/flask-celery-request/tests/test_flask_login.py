"""Flask-Login: the task's current_user is the sender's, loaded through the app's user_loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from conftest import Published, make_app, sealer_of
from flask_celery_request import CONTEXT_HEADER, CeleryWithContext


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@dataclass
class Site:
    """An app with a LoginManager, its users, and a record of every user_loader call."""

    app: Flask
    celery: CeleryWithContext
    users: dict[str, User]
    loads: list[str] = field(default_factory=list)
    task: Any = None


@pytest.fixture
def site(published: Published) -> Site:
    app = make_app()
    manager = LoginManager(app)
    site = Site(app, CeleryWithContext(app), {"7": User("7"), "8": User("8")})

    @manager.user_loader
    def load_user(user_id: str) -> User | None:
        site.loads.append(user_id)
        return site.users.get(user_id)

    @manager.request_loader
    def load_from_request(req: Any) -> User | None:
        api_key = req.headers.get("Authorization", "")
        return site.users.get(api_key.removeprefix("Key ")) if api_key.startswith("Key ") else None

    @site.celery.task
    def who() -> dict[str, Any]:
        return {"authenticated": current_user.is_authenticated, "id": current_user.get_id(),
                "user_is_loaded": current_user._get_current_object() is site.users.get(current_user.get_id())}

    site.task = who

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(site.users[user_id], remember=request.args.get("remember") == "1")
        return ""

    @app.post("/send")
    def send() -> str:
        loads_before = len(site.loads)
        who.delay()
        # The view never touched current_user: sending must not load it either.
        return str(len(site.loads) - loads_before)

    @app.post("/send-after-logout")
    def send_after_logout() -> str:
        logout_user()
        who.delay()
        return ""

    return site


def run_in_worker(site: Site, token: str | None) -> dict[str, Any]:
    """Run the task as a worker would: outside any request, from its header alone."""
    site.loads.clear()
    return site.task.apply(headers={CONTEXT_HEADER: token} if token else None).get()


def test_user_the_view_loaded_is_restored(site: Site, published: Published) -> None:
    with site.app.test_request_context("/"):
        login_user(site.users["7"])
        assert current_user.get_id() == "7"
        site.task.delay()
    assert sealer_of(site.app).open(published.tokens[0])["u"] == "7"
    assert run_in_worker(site, published.tokens[0]) == {"authenticated": True, "id": "7", "user_is_loaded": True}
    assert site.loads == ["7"]  # through the app's own user_loader


def test_user_the_view_did_not_load_is_restored(site: Site, published: Published) -> None:
    client = site.app.test_client()
    client.post("/login/8")
    site.loads.clear()
    assert client.post("/send").get_data(as_text=True) == "0"  # the id came from the session
    assert run_in_worker(site, published.tokens[0])["id"] == "8"


def test_user_signed_in_by_remember_cookie_only(site: Site, published: Published) -> None:
    client = site.app.test_client()
    client.post("/login/7?remember=1")
    client.delete_cookie("session")
    assert client.get_cookie("remember_token") is not None
    client.post("/send")
    assert run_in_worker(site, published.tokens[0])["id"] == "7"


def test_user_signed_in_by_request_loader(site: Site, published: Published) -> None:
    """The Authorization header is never carried; the user id is."""
    client = site.app.test_client()
    client.post("/send", headers={"Authorization": "Key 8"})
    context = sealer_of(site.app).open(published.tokens[0])
    assert "HTTP_AUTHORIZATION" not in context["e"]
    assert run_in_worker(site, published.tokens[0])["id"] == "8"


def test_strong_session_protection_loads_the_user(site: Site, published: Published) -> None:
    site.app.config["SESSION_PROTECTION"] = "strong"
    client = site.app.test_client()
    client.post("/login/7")
    client.post("/send")
    assert run_in_worker(site, published.tokens[0])["id"] == "7"


def test_anonymous_carries_nothing(site: Site, published: Published) -> None:
    site.app.test_client().post("/send")
    assert "u" not in sealer_of(site.app).open(published.tokens[0])
    assert run_in_worker(site, published.tokens[0]) == {"authenticated": False, "id": None,
                                                        "user_is_loaded": False}
    assert site.loads == []


def test_logged_out_in_the_view_carries_nothing(site: Site, published: Published) -> None:
    client = site.app.test_client()
    client.post("/login/7")
    client.post("/send-after-logout")
    assert "u" not in sealer_of(site.app).open(published.tokens[0])
    assert run_in_worker(site, published.tokens[0])["authenticated"] is False


def test_deleted_user_replays_as_anonymous(site: Site, published: Published) -> None:
    with site.app.test_request_context("/"):
        login_user(site.users["7"])
        site.task.delay()
    del site.users["7"]
    assert run_in_worker(site, published.tokens[0]) == {"authenticated": False, "id": None,
                                                        "user_is_loaded": False}
    assert site.loads == ["7"]


def test_app_without_login_manager_carries_no_user(app: Flask, published: Published) -> None:
    celery = CeleryWithContext(app)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/"):
        noop.delay()
    assert "u" not in sealer_of(app).open(published.tokens[0])
