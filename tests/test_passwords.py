"""app/auth/passwords.py: what a new password must be, and the forms that say so."""
import pytest

from app.auth.passwords import password_problem
from tests.test_auth import form_errors

COMMON = "Choose a less common password"
FROM_NAMES = "Do not build your password from your username or email address."


@pytest.mark.parametrize("password", ["password", "12345678", "qwertyuiop", "iloveyou2", "11111111"])
def test_common_passwords_are_refused_with_zxcvbn_s_reason(password):
    problem = password_problem(password, "susan", "susan@example.com")
    assert problem is not None and COMMON in problem


@pytest.mark.parametrize("password", ["susan123", "Susan-2024!", "123susan", "susanexample", "nasus-susan"])
def test_passwords_built_from_the_username_or_email_are_refused(password):
    assert password_problem(password, "susan", "susan@example.com") == FROM_NAMES


def test_a_password_built_from_the_email_s_local_part_is_refused():
    assert password_problem("wolfgang-1756", "mozart", "wolfgang@example.com") == FROM_NAMES


@pytest.mark.parametrize("password", ["correct horse", "Tr0ub4dor&3", "lantern quiet mango", "x7#Lq9!vR2"])
def test_strong_passwords_pass(password):
    assert password_problem(password, "susan", "susan@example.com") is None


def test_short_passwords_are_refused_first():
    assert password_problem("Zq9!x", "susan", "susan@example.com") == "Use at least 8 characters."


def test_a_long_password_is_judged_without_error():
    assert password_problem("lantern quiet mango " * 12, "susan", "susan@example.com") is None


@pytest.mark.parametrize(("password", "message"), [
    ("password", COMMON), ("12345678", COMMON), ("susan2026", FROM_NAMES),
])
def test_registration_shows_the_refusal_on_the_form(app, auth, password, message):
    response = auth.register("susan", password=password)
    assert response.status_code == 400
    assert any(message in error for error in form_errors(response))
