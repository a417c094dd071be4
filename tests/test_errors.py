"""app/errors: error pages in the site layout, JSON for JSON clients, errors logged."""
import logging

import pytest
import sqlalchemy as sa
from flask import abort

from app import create_app
from app.extensions import db
from app.models import User
from config import ProductionConfig

JSON = {"Accept": "application/json"}
SECRET_DETAIL = "database password is hunter2"


@pytest.fixture
def app_with_failures(app):
    """The factory's app plus throwaway routes that fail in each way."""

    @app.route("/forbidden")
    def forbidden():
        abort(403)

    @app.route("/explode")
    def explode():
        raise RuntimeError(SECRET_DETAIL)

    @app.route("/explode-after-write")
    def explode_after_write():
        db.session.add(User(username="half", email="half@example.com"))
        db.session.flush()
        raise RuntimeError("after a write")

    @app.route("/unavailable")
    def unavailable():
        abort(503)

    return app


@pytest.fixture
def failing_client(app_with_failures):
    return app_with_failures.test_client()


@pytest.mark.parametrize(
    ("path", "status", "heading"),
    [("/no/such/page", 404, "404: Not Found"), ("/forbidden", 403, "403: Forbidden"),
     ("/explode", 500, "500: Internal Server Error")],
)
def test_error_pages_render_in_the_site_layout(failing_client, path, status, heading):
    response = failing_client.get(path)
    html = response.get_data(as_text=True)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert '<a class="brand" href="/">Microblog</a>' in html
    assert f"<h1>{heading}</h1>" in html


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [("/no/such/page", 404, "Not Found"), ("/forbidden", 403, "Forbidden"),
     ("/explode", 500, "Internal Server Error"), ("/unavailable", 503, "Service Unavailable")],
)
def test_json_clients_get_json_errors(failing_client, path, status, error):
    response = failing_client.get(path, headers=JSON)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == error and body["message"]


def test_a_browser_accepting_anything_gets_the_html_page(failing_client):
    response = failing_client.get("/no/such/page", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.mimetype == "text/html"


def test_an_unexpected_exception_is_logged_with_its_traceback(failing_client, caplog):
    with caplog.at_level(logging.ERROR):
        failing_client.get("/explode")
    records = [r for r in caplog.records if "Unhandled error on GET /explode" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info and isinstance(records[0].exc_info[1], RuntimeError)


def test_the_500_page_does_not_leak_the_exception(failing_client):
    for headers in ({}, JSON):
        response = failing_client.get("/explode", headers=headers)
        assert SECRET_DETAIL not in response.get_data(as_text=True)


def test_a_failed_request_leaves_no_half_written_rows(app_with_failures, failing_client):
    assert failing_client.get("/explode-after-write").status_code == 500
    with app_with_failures.app_context():
        assert db.session.scalar(sa.select(sa.func.count(User.id))) == 0


def test_the_app_keeps_serving_after_a_500(failing_client):
    failing_client.get("/explode-after-write")
    assert failing_client.get("/auth/login").status_code == 200


def test_method_not_allowed_keeps_the_allow_header(client):
    response = client.delete("/auth/login")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert '<a class="brand"' in response.get_data(as_text=True)


def test_csrf_failure_as_json(client):
    client.get("/auth/login")
    response = client.post("/auth/login", data={"username": "x", "password": "y"}, headers=JSON)
    assert response.status_code == 400
    assert "CSRF token is missing" in response.get_json()["message"]


def test_an_untrusted_host_is_400_not_500(app_environ):
    environ = {**app_environ, "SECRET_KEY": "a-production-secret-0123456789abcdef",
               "TRUSTED_HOSTS": "microblog.example"}
    app = create_app(ProductionConfig(environ))
    try:
        response = app.test_client().get("/auth/login", base_url="https://evil.example")
        assert response.status_code == 400
        assert "not trusted" in response.get_data(as_text=True)
    finally:
        with app.app_context():
            db.engine.dispose()
