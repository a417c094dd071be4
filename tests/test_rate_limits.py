"""app/auth/limits.py: sign-in, registration and reset requests limited in the real Redis."""
from __future__ import annotations

import logging

import pytest

from tests.conftest import AuthActions

PASSWORD = "correct horse"


@pytest.fixture
def limited_app(make_app):
    return make_app(RATELIMIT_SIGNIN_PER_ACCOUNT="3 per 15 minutes", RATELIMIT_SIGNIN_PER_ADDRESS="6 per 15 minutes",
                    RATELIMIT_REGISTER_PER_ADDRESS="8 per hour", RATELIMIT_RESET_PER_ACCOUNT="2 per hour",
                    RATELIMIT_RESET_PER_ADDRESS="4 per hour")


def _register(app, *names: str) -> AuthActions:
    auth = AuthActions(app.test_client())
    for name in names:
        assert auth.register(name).status_code == 302, name
    return auth


def _assert_refused(response, reason: str, window_seconds: int) -> None:
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= window_seconds + 1  # whole seconds, rounded up
    body = response.get_data(as_text=True)
    assert reason in body and "Please try again in" in body


def test_after_the_failures_an_account_allows_even_the_right_password_is_refused(limited_app):
    auth = _register(limited_app, "susan")
    for _ in range(3):
        assert auth.login("susan", "wrong horse").status_code == 401
    refused = auth.login("susan", PASSWORD)
    _assert_refused(refused, "Too many failed sign-ins for this account.", 15 * 60)
    assert "try again in 15 minutes" in refused.get_data(as_text=True)
    assert auth.get("/").status_code == 302  # still signed out


def test_the_account_limit_counts_the_name_however_it_is_typed(limited_app):
    auth = _register(limited_app, "susan")
    for typed in ("susan", "SUSAN", "ｓｕｓａｎ"):
        assert auth.login(typed, "wrong horse").status_code == 401
    assert auth.login("susan", PASSWORD).status_code == 429


def test_successful_sign_ins_are_not_counted(limited_app):
    auth = _register(limited_app, "susan")
    for _ in range(5):
        assert auth.login("susan", PASSWORD).status_code == 302
        auth.logout()


def test_the_address_limit_stops_guessing_across_many_accounts(limited_app):
    auth = _register(limited_app, "ann", "bob", "cat", "dan")
    for name in ("ann", "bob", "cat"):
        for _ in range(2):
            assert auth.login(name, "wrong horse").status_code == 401
    _assert_refused(auth.login("dan", PASSWORD), "Too many failed sign-ins from your address.", 15 * 60)
    # Another address is not affected.
    elsewhere = AuthActions(limited_app.test_client())
    token = elsewhere.csrf_token()
    response = elsewhere.post("/auth/login", data={"username": "dan", "password": PASSWORD, "csrf_token": token},
                              environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert response.status_code == 302


def test_a_json_client_gets_the_reason_as_json(limited_app):
    auth = _register(limited_app, "susan")
    for _ in range(3):
        auth.login("susan", "wrong horse")
    response = auth.login("susan", PASSWORD, headers={"Accept": "application/json"})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.get_json()["message"].startswith("Too many failed sign-ins for this account.")


def test_registrations_per_address_are_limited(limited_app):
    auth = _register(limited_app, *(f"user{n}" for n in range(8)))
    _assert_refused(auth.register("user8"), "Too many registrations from your address.", 3600)


def test_reset_requests_are_limited_per_address_typed_and_per_client(limited_app):
    auth = _register(limited_app, "susan")
    token = auth.csrf_token("/auth/reset_password_request")

    def ask(email: str):
        return auth.post("/auth/reset_password_request", data={"email": email, "csrf_token": token})

    assert ask("susan@example.com").status_code == 302
    assert ask("SUSAN@example.com").status_code == 302
    _assert_refused(ask("susan@example.com"), "Too many password-reset requests for this address.", 3600)
    assert ask("nobody@example.com").status_code == 302
    _assert_refused(ask("another@example.com"), "Too many password-reset requests from your address.", 3600)


def test_the_counters_are_in_the_app_s_redis(limited_app, redis_service, unit_redis_db):
    auth = _register(limited_app, "susan")
    auth.login("susan", "wrong horse")
    prefix = limited_app.config["RATELIMIT_KEY_PREFIX"]
    keys = redis_service.client(unit_redis_db).keys(f"*{prefix}*")
    assert any(b"account:susan" in key for key in keys), keys


def test_an_unreachable_limiter_store_fails_open_and_logs(make_app, tmp_path, caplog):
    app = make_app(RATELIMIT_STORAGE_URI=f"redis+unix://{tmp_path}/no-redis-here.sock",
                   RATELIMIT_SIGNIN_PER_ACCOUNT="1 per 15 minutes")
    auth = _register(app, "susan")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert auth.login("susan", "wrong horse").status_code == 401
        assert auth.login("susan", PASSWORD).status_code == 302
    assert any("rate limit" in record.getMessage().lower() for record in caplog.records), caplog.text
