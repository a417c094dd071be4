"""Security headers (Flask-Talisman) on every response; HSTS in production only."""
import re
from pathlib import Path

import pytest
from flask import abort

from config import DevelopmentConfig, ProductionConfig, TestingConfig

TEMPLATES = Path(__file__).resolve().parents[1] / "app" / "templates"
PRODUCTION = {"SECRET_KEY": "a-production-secret-0123456789abcdef", "TRUSTED_HOSTS": "microblog.example"}
EXPECTED_CSP = {
    "default-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
STRICT_REFERRER_POLICIES = {"strict-origin-when-cross-origin", "strict-origin", "same-origin", "no-referrer"}


def csp_directives(response) -> dict[str, str]:
    header = response.headers["Content-Security-Policy"]
    return {name: value for name, _, value in (part.strip().partition(" ") for part in header.split(";"))}


@pytest.fixture
def every_kind_client(app):
    @app.route("/explode")
    def explode():
        raise RuntimeError("boom")

    @app.route("/forbidden")
    def forbidden():
        abort(403)

    return app.test_client()


ANSWERS = {
    "page": ("GET", "/auth/login", {}, 200),
    "redirect to login": ("GET", "/", {}, 302),
    "JSON": ("GET", "/healthz", {}, 200),
    "JSON 401": ("GET", "/tasks/some-task-id", {}, 401),
    "static file": ("GET", "/static/tasks.js", {}, 200),
    "missing static file": ("GET", "/static/no-such.js", {}, 404),
    "404 page": ("GET", "/no/such/page", {}, 404),
    "404 JSON": ("GET", "/no/such/page", {"headers": {"Accept": "application/json"}}, 404),
    "403": ("GET", "/forbidden", {}, 403),
    "405": ("DELETE", "/auth/login", {}, 405),
    "400 CSRF": ("POST", "/auth/login", {"data": {"username": "x"}}, 400),
    "413": ("POST", "/auth/login", {"data": b"x" * (2 * 1024 * 1024),
                                    "content_type": "application/x-www-form-urlencoded"}, 413),
    "500": ("GET", "/explode", {}, 500),
    "HEAD": ("HEAD", "/auth/login", {}, 200),
}


@pytest.mark.parametrize("kind", ANSWERS)
def test_every_response_carries_the_security_headers(every_kind_client, kind):
    method, path, kwargs, status = ANSWERS[kind]
    response = every_kind_client.open(path, method=method, **kwargs)
    assert response.status_code == status
    assert csp_directives(response) == EXPECTED_CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] in STRICT_REFERRER_POLICIES
    response.close()  # a static file is streamed from disk


def test_the_policy_allows_no_inline_script_or_style(client):
    header = client.get("/auth/login").headers["Content-Security-Policy"]
    assert "unsafe-inline" not in header and "unsafe-eval" not in header
    assert not {"script-src", "style-src", "style-src-attr"} & set(csp_directives(client.get("/")))


def test_a_refused_host_still_gets_the_headers(make_app):
    app = make_app(ProductionConfig, **PRODUCTION)
    response = app.test_client().get("/auth/login", base_url="https://evil.example")
    assert response.status_code == 400
    assert csp_directives(response) == EXPECTED_CSP
    assert response.headers["X-Frame-Options"] == "DENY"


# Markup the policy refuses: style attributes and elements, inline scripts, on* handlers,
# javascript: URLs. Email templates are not served to browsers and are not checked.
INLINE = re.compile(r"""\sstyle\s*=|<style\b|<script\b(?![^>]*\bsrc=)|\son[a-z]+\s*=|javascript:""", re.I)


def test_no_template_has_inline_script_or_style():
    pages = [path for path in TEMPLATES.rglob("*.html") if "email" not in path.relative_to(TEMPLATES).parts]
    assert pages, f"no templates found under {TEMPLATES}"
    found = [f"{path.relative_to(TEMPLATES)}:{n}: {line.strip()}" for path in pages
             for n, line in enumerate(path.read_text().splitlines(), 1) if INLINE.search(line)]
    assert found == []


# --- HSTS, https redirects and cookie flags follow the config ---------------------------


def test_production_sends_hsts_on_https(make_app):
    client = make_app(ProductionConfig, **PRODUCTION).test_client()
    direct = client.get("/auth/login", base_url="https://microblog.example")
    proxied = client.get("/auth/login", base_url="http://microblog.example",
                         headers={"X-Forwarded-Proto": "https"})
    for response in (direct, proxied):
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31556926")
    # Browsers ignore it over plain http (RFC 6797, 8.1).
    plain = client.get("/auth/login", base_url="http://microblog.example")
    assert "Strict-Transport-Security" not in plain.headers


def test_security_hsts_turns_it_off_in_production(make_app):
    client = make_app(ProductionConfig, **PRODUCTION, SECURITY_HSTS="0").test_client()
    response = client.get("/auth/login", base_url="https://microblog.example")
    assert "Strict-Transport-Security" not in response.headers


def test_each_app_keeps_its_own_hsts_setting(make_app):
    testing = make_app(TestingConfig).test_client()
    production = make_app(ProductionConfig, **PRODUCTION).test_client()
    # Built before the production app, used after it: its own setting still holds.
    assert "Strict-Transport-Security" not in testing.get("/auth/login", base_url="https://localhost").headers
    response = production.get("/auth/login", base_url="https://microblog.example")
    assert "Strict-Transport-Security" in response.headers


@pytest.mark.parametrize("config_class", [DevelopmentConfig, TestingConfig])
def test_development_and_testing_send_no_hsts(make_app, config_class):
    client = make_app(config_class).test_client()
    assert "Strict-Transport-Security" not in client.get("/auth/login", base_url="https://localhost").headers


@pytest.mark.parametrize(("config_class", "environ", "base_url"), [
    (DevelopmentConfig, {}, "http://127.0.0.1:5000"),
    (TestingConfig, {}, "http://localhost"),
    # TLS ends at the proxy, which redirects; a plain-http probe of /healthz must get its answer.
    (ProductionConfig, PRODUCTION, "http://microblog.example"),
], ids=["development", "testing", "production"])
def test_plain_http_is_answered_not_redirected_to_https(make_app, config_class, environ, base_url):
    client = make_app(config_class, **environ).test_client()
    for path in ("/auth/login", "/healthz"):
        assert client.get(path, base_url=base_url).status_code == 200


def session_cookie_flags(response) -> set[str]:
    cookie = next(value for value in response.headers.getlist("Set-Cookie") if value.startswith("session="))
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


@pytest.mark.parametrize("config_class", [DevelopmentConfig, TestingConfig])
def test_the_session_cookie_is_not_secure_on_plain_http_development(make_app, config_class):
    client = make_app(config_class).test_client()
    flags = session_cookie_flags(client.get("/auth/login", base_url="http://127.0.0.1:5000"))
    assert "secure" not in flags  # or the browser would never send it back over http
    assert {"httponly", "samesite"} <= flags


def test_the_session_cookie_is_secure_in_production(make_app):
    client = make_app(ProductionConfig, **PRODUCTION).test_client()
    flags = session_cookie_flags(client.get("/auth/login", base_url="https://microblog.example"))
    assert {"secure", "httponly", "samesite"} <= flags
