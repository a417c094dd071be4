"""What the carrier keeps, drops and accepts, read once from the Flask config."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Headers never captured (case-insensitive), whatever their value: credentials, and the
#: identity assertions that proxies (Google IAP, Cloudflare Access, AWS ALB, Azure App
#: Service, oauth2-proxy) add to each request.
DEFAULT_DROP_HEADERS = (
    "Cookie",
    "Authorization",
    "Proxy-Authorization",
    "X-CSRFToken",
    "X-CSRF-Token",
    "X-XSRF-Token",
    "X-API-Key",
    "X-Auth-Token",
    "X-Goog-IAP-JWT-Assertion",
    "Cf-Access-Jwt-Assertion",
    "X-Amzn-Oidc-Data",
    "X-Amzn-Oidc-Accesstoken",
    "X-MS-Client-Principal",
    "X-Forwarded-Access-Token",
    "X-Forwarded-Client-Cert",
)

#: Header, form, JSON and query field names matching this (case-insensitive, camelCase
#: split into words first) are dropped at capture. Short words (pin, otp, cvv) only
#: match whole, so ``spinner`` or ``hotpot`` stay.
DEFAULT_SENSITIVE_PATTERN = (
    r"(?<![a-z])pass(words?|wd|phrases?|codes?)?(?![a-z])|pwd|secret|token|csrf|xsrf|credential|cookie|session"
    r"|signature|assertion|jwt|oidc|saml|authoriz|auth(?!or)|api_?key|private_?key|access_?key"
    r"|card_?(numbers?|nums?|nos?)(?![a-z])|credit_?card|cc_?(number|num)|(?<![a-z0-9])("
    r"pin|pin_?code|otp|totp|hotp|mfa|2fa|cvv2?|cvc2?|csc|ssn|iban"
    r"|(verification|security|recovery|backup|reset|confirmation|one_?time|sms|two_?factor)_?codes?"
    r")(?![a-z0-9])|^code$"
)

#: Headers whose value is a URL: their query parameters are scrubbed by name.
URL_HEADERS = (
    "Referer",
    "Origin",
    "Location",
    "Content-Location",
    "X-Original-URL",
    "X-Original-URI",
    "X-Rewrite-URL",
    "X-Forwarded-Uri",
)

#: Environ keys carried as they are; with the HTTP_* headers they are all werkzeug reads
#: to build method, scheme, host, port, script root, path, args and remote address. The
#: raw request line (REQUEST_URI, RAW_URI) is not: werkzeug never reads it, and it
#: repeats the path and query.
CARRIED_ENVIRON_KEYS = frozenset({
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "wsgi.url_scheme",
})

DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_AGE = 7 * 24 * 3600
DEFAULT_REQUEST_ID_HEADER = "X-Request-Id"
#: Where ``init_app`` keeps an app's settings and sealer, in ``app.extensions``.
EXTENSION_KEY = "flask_celery_request"

#: Header verdicts.
DROP, KEEP, SCRUB_URL = 0, 1, 2
_REMEMBERED_NAMES = 4096
_REMEMBERED_PLANS = 256
_REMEMBERED_PLAN_KEYS = 128
_REMEMBERED_NAME_LENGTH = 128
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[-\s.\[\]]+")


def environ_header_key(name: str) -> str:
    """``X-Api-Key`` -> ``HTTP_X_API_KEY``, as WSGI servers name headers."""
    return "HTTP_" + name.upper().replace("-", "_")


@dataclass(frozen=True)
class ContextSettings:
    """The ``CELERY_CONTEXT_*`` settings of one Flask app."""

    drop_headers: frozenset[str]
    url_headers: frozenset[str]
    sensitive: re.Pattern[str] | None
    max_bytes: int
    max_age: int
    #: The environ key of the header a request id is read from; None: always make one.
    request_id_key: str | None = None
    #: The ``g`` attributes carried to the worker (``CELERY_CONTEXT_G_KEYS``).
    g_keys: tuple[str, ...] = ()
    # Field and header names repeat from request to request, and judging one costs a few
    # microseconds: remember the verdicts, for names of an ordinary length (clients
    # choose them) and up to a bounded count, so the memory stays small.
    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _header_verdicts: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _plans: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ContextSettings:
        headers = config.get("CELERY_CONTEXT_DROP_HEADERS")
        pattern = config.get("CELERY_CONTEXT_SENSITIVE_PATTERN")
        max_bytes = int(config.get("CELERY_CONTEXT_MAX_BYTES") or DEFAULT_MAX_BYTES)
        max_age = int(config.get("CELERY_CONTEXT_MAX_AGE") or DEFAULT_MAX_AGE)
        if max_bytes < 1024:
            raise ValueError(f"CELERY_CONTEXT_MAX_BYTES must be at least 1024, found {max_bytes}")
        if max_age < 1:
            raise ValueError(f"CELERY_CONTEXT_MAX_AGE must be a positive number of seconds, found {max_age}")
        request_id_header = config.get("CELERY_CONTEXT_REQUEST_ID_HEADER", DEFAULT_REQUEST_ID_HEADER)
        g_keys = config.get("CELERY_CONTEXT_G_KEYS") or ()
        if isinstance(g_keys, str):
            g_keys = [key.strip() for key in g_keys.split(",") if key.strip()]
        for key in g_keys:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"CELERY_CONTEXT_G_KEYS must name g attributes (identifiers), found {key!r}")
        return cls(
            drop_headers=frozenset(environ_header_key(name)
                                   for name in (DEFAULT_DROP_HEADERS if headers is None else headers)),
            url_headers=frozenset(environ_header_key(name) for name in URL_HEADERS),
            sensitive=re.compile(DEFAULT_SENSITIVE_PATTERN if pattern is None else pattern, re.IGNORECASE)
            if pattern != "" else None,
            max_bytes=max_bytes,
            max_age=max_age,
            request_id_key=environ_header_key(request_id_header) if request_id_header else None,
            g_keys=tuple(g_keys),
        )

    def environ_plan(self, keys: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        """The keys of an environ with these keys that capture carries, in order, each
        with its verdict (:data:`KEEP` for the request fields werkzeug reads). A server
        builds the environs of one kind of request with the same keys in the same
        order, so this is decided once per kind, for environs of an ordinary size."""
        plan = self._plans.get(keys)
        if plan is None:
            plan = tuple((key, verdict) for key in keys if (verdict := self._environ_verdict(key)) != DROP)
            if len(keys) <= _REMEMBERED_PLAN_KEYS and len(self._plans) < _REMEMBERED_PLANS \
                    and all(len(key) <= _REMEMBERED_NAME_LENGTH for key in keys):
                self._plans[keys] = plan
        return plan

    def _environ_verdict(self, key: str) -> int:
        if key.startswith("HTTP_"):
            return self.header_verdict(key)
        return KEEP if key in CARRIED_ENVIRON_KEYS else DROP

    def header_verdict(self, environ_key: str) -> int:
        """For an ``HTTP_*`` environ key: :data:`DROP`, :data:`KEEP`, or
        :data:`SCRUB_URL` (a URL-valued header whose query is scrubbed)."""
        verdict = self._header_verdicts.get(environ_key)
        if verdict is None:
            if environ_key in self.drop_headers or self.is_sensitive(environ_key[5:]):
                verdict = DROP
            else:
                verdict = SCRUB_URL if environ_key in self.url_headers else KEEP
            _remember(self._header_verdicts, environ_key, verdict)
        return verdict

    def is_sensitive(self, name: str) -> bool:
        """Whether a header, form, JSON or query field name is one capture leaves out."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = self.sensitive is not None and self.sensitive.search(
                _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", name))) is not None
            _remember(self._verdicts, name, verdict)
        return verdict


def _remember(verdicts: dict, name: str, verdict: Any) -> None:
    if len(name) <= _REMEMBERED_NAME_LENGTH and len(verdicts) < _REMEMBERED_NAMES:
        verdicts[name] = verdict
