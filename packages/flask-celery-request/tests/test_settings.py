"""The CELERY_CONTEXT_* settings, and which field names count as credentials."""
from __future__ import annotations

import re

import pytest

from flask_celery_request.settings import (
    DEFAULT_DROP_HEADERS,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    ContextSettings,
    environ_header_key,
)

DEFAULTS = ContextSettings.from_config({})

#: Names a credential hides behind, in headers (as WSGI names them, less HTTP_), form
#: fields, JSON keys and query parameters: each must be left out.
SENSITIVE_NAMES = [
    # passwords
    "password", "Password", "PASSWORD", "passwd", "pwd", "pass", "passphrase", "passcode",
    "new_password", "password2", "password_confirmation", "confirm-password", "user[password]",
    "userPassword", "passwordConfirm", "newPassword", "passwords", "old_passwords", "passcodes",
    # secrets, tokens, sessions, signatures
    "secret", "client_secret", "clientSecret", "token", "access_token", "refreshToken", "id_token",
    "csrf_token", "csrfmiddlewaretoken", "xsrf", "_csrf", "credentials", "session_id", "sessionId",
    "cookie", "signature", "X_HUB_SIGNATURE_256", "SAMLResponse", "saml_assertion",
    # keys and authorization
    "api_key", "apikey", "apiKey", "APIKey", "X_API_KEY", "private_key", "privateKey",
    "access_key", "AWSAccessKeyId", "authorization", "auth", "authCode", "oauth_verifier",
    "authenticity_token",
    # identity-proxy JWT assertions, as header names
    "X_GOOG_IAP_JWT_ASSERTION", "CF_ACCESS_JWT_ASSERTION", "X_AMZN_OIDC_DATA", "X_AMZN_OIDC_IDENTITY",
    "jwt", "X-Goog-IAP-JWT-Assertion", "Cf-Access-Jwt-Assertion", "X-Amzn-Oidc-Data",
    # one-time codes, PINs
    "otp", "OTP", "otp_code", "otpCode", "totp", "hotp", "mfa", "mfa_code", "mfaCode", "2fa", "2fa_code",
    "code", "verification_code", "verificationCode", "security_code", "recovery_code", "backup_code",
    "reset_code", "confirmation_code", "one_time_code", "oneTimeCode", "onetimecode", "sms_code", "smsCode",
    "pin", "PIN", "pin_code", "pincode", "pinCode", "userPin", "card_pin",
    "backup_codes", "recovery_codes", "recoveryCodes", "verification_codes", "two_factor_code",
    "twoFactorCode", "2fa_codes",
    # payment cards, identity numbers
    "card_number", "cardNumber", "card_num", "cardNo", "card-number", "credit_card", "creditCard",
    "cc_number", "ccNum", "card_numbers", "cardNumbers", "cvv", "CVV", "cvv2", "cvc", "card_cvc", "cardCvv", "csc", "ssn", "iban",
]

#: Ordinary names that only look like credentials: each must be kept.
KEPT_NAMES = [
    "author", "author_id", "authors", "authored_by", "authority", "country_code", "zip_code",
    "postal_code", "language_code", "currency_code", "barcode", "encode", "codec", "spinner",
    "spinach", "pinned", "pinyin", "opinion", "shipping", "mapping", "hotpot", "bypass_cache",
    "bypass", "compass", "passage", "passages", "passes", "passenger", "passport", "two_factor_enabled",
    "card_notes", "card_holder", "recovery_email", "page", "per_page", "q", "sort", "next", "title",
    "body", "email", "username", "user_id", "remember", "subject", "message", "description",
    "keyword", "monkey", "account_number", "signup", "USER_AGENT", "ACCEPT_LANGUAGE", "ACCEPT",
    "REFERER", "ORIGIN", "HOST", "X_REQUEST_ID", "X_FORWARDED_FOR", "CACHE_CONTROL", "IF_NONE_MATCH",
    "SEC_FETCH_SITE", "X_REQUESTED_WITH", "CONTENT_TYPE", "ccTLD", "discount",
]


@pytest.mark.parametrize("name", SENSITIVE_NAMES)
def test_credential_names_are_sensitive(name: str) -> None:
    """Each of these names a credential: capture must leave the field out."""
    assert DEFAULTS.is_sensitive(name), name


@pytest.mark.parametrize("name", KEPT_NAMES)
def test_ordinary_names_are_kept(name: str) -> None:
    """Short words match whole and ``auth`` is not ``author``: the task needs these fields."""
    assert not DEFAULTS.is_sensitive(name), name


def test_verdict_is_stable_for_repeated_and_long_names() -> None:
    """Asking twice gives the same answer, also for names too long to be remembered."""
    long_secret = "x" * 300 + "_password"
    long_plain = "x" * 300 + "_title"
    for _ in range(3):
        assert DEFAULTS.is_sensitive(long_secret)
        assert not DEFAULTS.is_sensitive(long_plain)
        assert DEFAULTS.is_sensitive("password")
        assert not DEFAULTS.is_sensitive("author")


def test_defaults() -> None:
    settings = ContextSettings.from_config({})
    assert settings.max_bytes == DEFAULT_MAX_BYTES == 64 * 1024
    assert settings.max_age == DEFAULT_MAX_AGE == 7 * 24 * 3600
    assert settings.drop_headers == {environ_header_key(name) for name in DEFAULT_DROP_HEADERS}
    assert {"HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_X_GOOG_IAP_JWT_ASSERTION",
            "HTTP_CF_ACCESS_JWT_ASSERTION", "HTTP_X_AMZN_OIDC_DATA"} <= settings.drop_headers
    assert "HTTP_REFERER" in settings.url_headers


def test_environ_header_key() -> None:
    assert environ_header_key("X-Api-Key") == "HTTP_X_API_KEY"
    assert environ_header_key("cf-access-jwt-assertion") == "HTTP_CF_ACCESS_JWT_ASSERTION"


def test_drop_headers_setting_replaces_the_list() -> None:
    settings = ContextSettings.from_config({"CELERY_CONTEXT_DROP_HEADERS": ["X-Internal"]})
    assert settings.drop_headers == {"HTTP_X_INTERNAL"}


def test_custom_sensitive_pattern_replaces_the_default() -> None:
    settings = ContextSettings.from_config({"CELERY_CONTEXT_SENSITIVE_PATTERN": r"^ticket$"})
    assert settings.is_sensitive("Ticket")  # case-insensitive, as the default
    assert not settings.is_sensitive("password")


def test_empty_pattern_turns_name_scrubbing_off() -> None:
    settings = ContextSettings.from_config({"CELERY_CONTEXT_SENSITIVE_PATTERN": ""})
    assert settings.sensitive is None
    assert not settings.is_sensitive("password")


def test_limits_are_read_from_config() -> None:
    settings = ContextSettings.from_config({"CELERY_CONTEXT_MAX_BYTES": "2048", "CELERY_CONTEXT_MAX_AGE": 60})
    assert (settings.max_bytes, settings.max_age) == (2048, 60)


@pytest.mark.parametrize("config, message", [
    ({"CELERY_CONTEXT_MAX_BYTES": 100}, "CELERY_CONTEXT_MAX_BYTES must be at least 1024"),
    ({"CELERY_CONTEXT_MAX_AGE": -5}, "CELERY_CONTEXT_MAX_AGE must be a positive number"),
])
def test_bad_limits_are_refused_at_startup(config: dict, message: str) -> None:
    """A misconfiguration fails at init_app, not at the first task."""
    with pytest.raises(ValueError, match=re.escape(message)):
        ContextSettings.from_config(config)
