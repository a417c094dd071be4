"""CeleryWithContext: Celery tasks that run inside the Flask request that sent them.

A task sent while a request is active carries that request to the worker, where
``request``, ``url_for(..., _external=True)``, ``render_template``, ``current_user``
and the app's ``after_request`` hooks behave as they did in the view. Three steps:

capture
    At send time (``apply_async``, ``apply``, ``retry``) the live request is reduced
    to a small JSON-able mapping: its WSGI environ keys (method, scheme, host, script
    root, path, raw query string, headers, client address), the parsed form or the
    body, and the logged-in user's id. Credentials are scrubbed here, before anything
    leaves the process (:func:`capture_request`).
transport
    The mapping is signed with the app's secret (itsdangerous) and travels in one
    message header, :data:`CONTEXT_HEADER`; the task's args and kwargs never see it.
    It is captured once per request and re-used by every task that request sends,
    including links of chains and chords, retries and tasks sent from inside a task.
replay
    In the worker the header is verified (a forged, tampered or malformed context is
    refused with :class:`ContextRefused`), turned back into a WSGI environ and the
    task runs inside ``app.request_context(environ)``; on success the app's
    ``after_request`` hooks run on an empty 200 response (:func:`replay_request`).

Without a request (beat, the CLI, a shell) a task runs in an app context, and
``url_for(_external=True)`` uses ``SERVER_NAME``. The session and ``g`` are not
carried: pass what a task needs as arguments.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sys
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from hmac import compare_digest
from io import BytesIO
from itertools import chain
from typing import Any
from urllib.parse import unquote_plus

import orjson
from celery import Celery, Task
from celery import current_task as _current_celery_task
from flask import Flask, current_app, has_app_context, has_request_context
from flask.ctx import RequestContext
from flask.globals import _cv_app, _cv_request
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature, Signer, want_bytes
from itsdangerous.signer import HMACAlgorithm
from kombu import Queue
from werkzeug import urls as _werkzeug_urls  # noqa: F401  (registers the "werkzeug.url_quote" error handler)
from werkzeug.datastructures import ImmutableMultiDict

try:  # Flask-Login is optional: without it no user is carried
    from flask_login import current_user as _current_user
except ImportError:  # pragma: no cover - the app installs it
    _current_user = None

logger = logging.getLogger(__name__)

#: The message header that carries the signed request context.
CONTEXT_HEADER = "flask_request_context"
#: Where a replayed request keeps its incoming token, so tasks it sends inherit it.
ENVIRON_TOKEN_KEY = "celery_with_context.token"
_FORMAT_VERSION = 1
_SIGNING_SALT = "celery-with-context.v1"

#: Headers never captured (case-insensitive), whatever their value.
DEFAULT_DROP_HEADERS = (
    "Cookie",
    "Authorization",
    "Proxy-Authorization",
    "X-CSRFToken",
    "X-CSRF-Token",
    "X-XSRF-Token",
    "X-API-Key",
    "X-Auth-Token",
)
#: Header, form, JSON and query field names matching this are dropped at capture.
DEFAULT_SENSITIVE_PATTERN = (
    r"pass(word|wd|phrase)?|pwd|secret|token|csrf|xsrf|api[-_]?key|authoriz|auth(?!or)"
    r"|cookie|session|credential|private[-_]?key|signature"
)
DEFAULT_MAX_BYTES = 64 * 1024

# Environ keys carried as they are; together with the HTTP_* headers they are what
# werkzeug reads to build request.method/scheme/host/script_root/path/args/remote_addr.
# Not the raw request line (REQUEST_URI, RAW_URI): werkzeug never reads it, it repeats
# the path and query (a scrubbed query would leak there) and it would lengthen every message.
_CARRIED_ENVIRON_KEYS = (
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
)
_CARRIED_KEY_SET = frozenset(_CARRIED_ENVIRON_KEYS)
_STR_TYPES = frozenset({str})
_FORM_MIMETYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_WSGI_CONSTANTS = {
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}


class ContextRefused(Exception):
    """The carried request context is unsigned, tampered, malformed or from another secret."""


@dataclass(frozen=True)
class ContextSettings:
    """What capture keeps and drops, read from the Flask config (``CELERY_CONTEXT_*``)."""

    drop_headers: frozenset[str]
    sensitive: re.Pattern[str] | None
    max_bytes: int
    # Environ keys, field names and query names repeat from request to request: capture
    # decides once per name (up to _MAX_DECISIONS names each) and then only looks up.
    _carried_keys: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _sensitive_names: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _sensitive_query_names: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _environ_plans: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ContextSettings:
        headers = config.get("CELERY_CONTEXT_DROP_HEADERS")
        pattern = config.get("CELERY_CONTEXT_SENSITIVE_PATTERN")
        max_bytes = int(config.get("CELERY_CONTEXT_MAX_BYTES") or DEFAULT_MAX_BYTES)
        if headers is None:
            headers = DEFAULT_DROP_HEADERS
        if pattern is None:
            pattern = DEFAULT_SENSITIVE_PATTERN
        if max_bytes < 1024:
            raise ValueError(f"CELERY_CONTEXT_MAX_BYTES must be at least 1024, found {max_bytes}")
        return cls(
            drop_headers=frozenset(_environ_header_key(name) for name in headers),
            sensitive=re.compile(pattern, re.IGNORECASE) if pattern else None,
            max_bytes=max_bytes,
        )

    def is_sensitive(self, name: str) -> bool:
        """Whether a header, form, JSON or query field name is one capture leaves out."""
        decision = self._sensitive_names.get(name)
        if decision is None:
            decision = self.sensitive is not None and self.sensitive.search(name) is not None
            _remember(self._sensitive_names, name, decision)
        return decision

    def drops_header(self, environ_key: str) -> bool:
        """Whether an ``HTTP_*`` environ key is a header capture leaves out."""
        return environ_key in self.drop_headers or self.is_sensitive(environ_key[5:].replace("_", "-"))

    def carries(self, environ_key: str) -> bool:
        """Whether capture keeps this environ key: a request field werkzeug reads, or a
        header that is neither dropped nor sensitive."""
        decision = self._carried_keys.get(environ_key)
        if decision is None:
            if environ_key.startswith("HTTP_"):
                decision = not self.drops_header(environ_key)
            else:
                decision = environ_key in _CARRIED_KEY_SET
            _remember(self._carried_keys, environ_key, decision)
        return decision

    def carried_environ(self, environ: Mapping[str, Any]) -> dict[str, str]:
        """The environ entries capture keeps, as strings, in the environ's order:
        request.headers lists CONTENT_TYPE and CONTENT_LENGTH where the server put them
        among the HTTP_* keys, and the replay must list them there too."""
        # A server builds every environ of a kind of request with the same keys in the
        # same order: decide once per such shape which of its keys are carried.
        shape = tuple(environ)
        keys = self._environ_plans.get(shape)
        if keys is None:
            keys = tuple(key for key in shape if self.carries(key))
            if len(self._environ_plans) < _MAX_ENVIRON_PLANS and _small_shape(shape):
                self._environ_plans[shape] = keys
        carried = {key: environ[key] for key in keys}
        if not _STR_TYPES.issuperset(map(type, carried.values())):
            # WSGI says str, but servers differ (werkzeug's REMOTE_PORT is an int).
            carried = {key: value if type(value) is str else str(value)
                       for key, value in carried.items() if value is not None}
        return carried

    def is_sensitive_query_name(self, raw_name: str) -> bool:
        """Whether a query field, by its raw (undecoded) name, is one capture leaves out."""
        decision = self._sensitive_query_names.get(raw_name)
        if decision is None:
            decision = self.is_sensitive(_query_name(raw_name))
            _remember(self._sensitive_query_names, raw_name, decision)
        return decision


_MAX_DECISIONS = 4096
_MAX_ENVIRON_PLANS = 1024
# Header names are the client's to choose (gunicorn allows 100 of up to 8 KB each):
# remember only names and environ shapes of an ordinary size, so the caches stay within
# a few megabytes whatever clients send; anything larger is decided every time.
_MAX_REMEMBERED_NAME = 256
_MAX_SHAPE_KEYS = 128
_MAX_SHAPE_CHARACTERS = 4096


def _remember(decisions: dict[str, bool], name: str, decision: bool) -> None:
    # Bounded: a client inventing a new header name per request costs a lookup, not memory.
    if len(decisions) < _MAX_DECISIONS and len(name) <= _MAX_REMEMBERED_NAME:
        decisions[name] = decision


def _small_shape(shape: tuple[str, ...]) -> bool:
    return len(shape) <= _MAX_SHAPE_KEYS and sum(map(len, shape)) <= _MAX_SHAPE_CHARACTERS


def _environ_header_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


# --- capture -----------------------------------------------------------------------------


def capture_request(settings: ContextSettings) -> dict[str, Any]:
    """Reduce the active request to a JSON-able mapping, with credentials scrubbed."""
    # The request and app objects themselves: each access through the ``request`` and
    # ``current_app`` proxies costs more than most of what capture does with it.
    ctx = _cv_request.get(None)
    if ctx is None:
        raise RuntimeError("capture_request() needs an active Flask request")
    live = ctx.request
    carried = settings.carried_environ(live.environ)

    query = carried.get("QUERY_STRING")
    if query and settings.sensitive is not None:
        kept = [part for part in query.split("&")
                if not settings.is_sensitive_query_name(part.partition("=")[0])]
        if len(kept) != query.count("&") + 1:
            carried["QUERY_STRING"] = "&".join(kept)

    context: dict[str, Any] = {"v": _FORMAT_VERSION, "e": carried}
    if live.mimetype in _FORM_MIMETYPES:
        # werkzeug names a multipart field it cannot parse the name of (a CR in it) None:
        # it could be anything, a password too, and no view can ask for it: leave it out.
        context["f"] = [
            [name, value]
            for name, value in live.form.items(multi=True)
            if name is not None and not settings.is_sensitive(name)
        ]
    elif live.content_length:
        _capture_body(context, live, settings)
    user_id = _current_user_id(ctx.app)
    if user_id is not None:
        context["u"] = user_id
    return context


def _query_name(raw_name: str) -> str:
    """A query field's name as ``request.args`` has it: werkzeug decodes the raw bytes as
    UTF-8, then percent escapes, keeping invalid ones as ``%XX`` (its url_quote handler).
    Judging the decoded name catches ``pas%73word`` and UTF-8 spellings alike."""
    raw = raw_name.encode("latin-1").decode("utf-8", "replace")
    return unquote_plus(raw, encoding="utf-8", errors="werkzeug.url_quote")


def _capture_body(context: dict[str, Any], live: Any, settings: ContextSettings) -> None:
    carried = context["e"]
    if live.content_length > settings.max_bytes:
        context["dropped"] = "body"
        carried.pop("CONTENT_LENGTH", None)
        return
    body = live.get_data(cache=True)
    if live.is_json and settings.sensitive is not None:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if document is not None:
            scrubbed, changed = _scrub_json(document, settings)
            if changed:
                body = _encode(scrubbed)
    carried["CONTENT_LENGTH"] = str(len(body))
    try:
        context["b"] = body.decode("utf-8")
    except UnicodeDecodeError:
        context["b64"] = base64.b64encode(body).decode("ascii")


def _scrub_json(value: Any, settings: ContextSettings) -> tuple[Any, bool]:
    if isinstance(value, dict):
        changed = False
        kept = {}
        for key, item in value.items():
            if settings.is_sensitive(key):
                changed = True
                continue
            kept[key], item_changed = _scrub_json(item, settings)
            changed = changed or item_changed
        return kept, changed
    if isinstance(value, list):
        items = [_scrub_json(item, settings) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def _current_user_id(app: Flask) -> str | None:
    if _current_user is None or getattr(app, "login_manager", None) is None:
        return None
    # Flask-Login keeps the user it loaded (login_required did, in most views) in g;
    # reading it there skips three proxies. Not loaded yet: let Flask-Login load it.
    user = getattr(_cv_app.get().g, "_login_user", None)
    if user is None:
        user = _current_user._get_current_object()
    if user.is_authenticated:
        return str(user.get_id())
    return None


def _shrink_to_fit(context: dict[str, Any], encoded: bytes, settings: ContextSettings) -> bytes | None:
    """Drop the body and form, then headers and query, until the context fits."""
    size = len(encoded)
    for stage in ("body", "headers"):
        if stage == "body":
            for key in ("f", "b", "b64"):
                context.pop(key, None)
            context["e"].pop("CONTENT_LENGTH", None)
        else:
            carried = context["e"]
            for key in [k for k in carried if k.startswith("HTTP_") and k != "HTTP_HOST"]:
                del carried[key]
            carried.pop("QUERY_STRING", None)
        context["dropped"] = stage
        encoded = _encode(context)
        if len(encoded) <= settings.max_bytes:
            logger.warning(
                "Request context of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d; "
                "dropped the %s to fit",
                size,
                settings.max_bytes,
                "body and form" if stage == "body" else "body, form, headers and query",
            )
            return encoded
    logger.warning(
        "Request context of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d even without "
        "body, form, headers and query (path %d bytes); sending the task without it",
        size,
        settings.max_bytes,
        len(context["e"].get("PATH_INFO", "")),
    )
    return None


# --- transport ---------------------------------------------------------------------------


def _encode(value: Any) -> bytes:
    """Compact UTF-8 JSON. orjson, because the json module costs several times more
    here, on every task sent; a lone surrogate (a JSON body's ``"\\ud800"``), which
    UTF-8 cannot hold, falls back to ASCII JSON with escapes."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _decode(payload: bytes | str) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)  # _encode's fallback (escaped surrogates); else ValueError


class _ContextSigner(Signer):
    """itsdangerous' Signer (same keys, salt, format and HMAC-SHA1 signatures) on a
    fast path, since a view signs and a worker verifies once per task.

    Each key is derived once and its HMAC's inner and outer SHA-1 states are computed
    once; a signature copies the two states (RFC 2104's construction, as the ``hmac``
    module builds it). Measured with cold caches, as in a busy worker, this costs less
    than half of ``hmac.digest``, which sets up an OpenSSL HMAC context every call.
    """

    default_digest_method = staticmethod(hashlib.sha1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.key_derivation == "none" or type(self.algorithm) is not HMACAlgorithm:
            raise ValueError("_ContextSigner signs with HMAC over derived keys only")
        # Newest first: it signs, and it is the likeliest to verify.
        self._states = [_hmac_states(self.digest_method, self.derive_key(key)) for key in reversed(self.secret_keys)]

    def get_signature(self, value: str | bytes) -> bytes:
        value = value if type(value) is bytes else want_bytes(value)
        return urlsafe_b64encode(_hmac_with(self._states[0], value)).rstrip(b"=")

    def sign(self, value: str | bytes) -> bytes:
        value = value if type(value) is bytes else want_bytes(value)
        return value + self.sep + self.get_signature(value)

    def unsign(self, signed_value: str | bytes) -> bytes:
        try:
            signed_value = signed_value if type(signed_value) is bytes else want_bytes(signed_value)
        except UnicodeEncodeError:  # a lone surrogate: no signature of ours looks like that
            raise BadSignature("Signed value is not UTF-8 text") from None
        value, sep, signature = signed_value.rpartition(self.sep)
        if not sep:
            raise BadSignature(f"No {self.sep!r} found in value")
        try:
            mac = urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))
        except ValueError:  # binascii.Error
            mac = None
        if mac:
            for states in self._states:
                if compare_digest(_hmac_with(states, value), mac):
                    return value
        raise BadSignature(f"Signature {signature!r} does not match", payload=value)


_HMAC_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_HMAC_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_states(digest_method: Any, key: bytes) -> tuple[Any, Any]:
    """The hash states after absorbing the padded key: HMAC's fixed first block."""
    block_size = digest_method().block_size
    if len(key) > block_size:
        key = digest_method(key).digest()
    key = key.ljust(block_size, b"\0")
    return digest_method(key.translate(_HMAC_INNER_PAD)), digest_method(key.translate(_HMAC_OUTER_PAD))


def _hmac_with(states: tuple[Any, Any], message: bytes) -> bytes:
    inner, outer = states[0].copy(), states[1].copy()
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()


@dataclass
class _AppState:
    """Per-Flask-app settings and signer, built once by :meth:`CeleryWithContext.init_app`."""

    settings: ContextSettings
    signer: Signer

    @classmethod
    def for_app(cls, app: Flask) -> _AppState:
        state = app.extensions.get("celery_with_context")
        if state is None:
            state = app.extensions["celery_with_context"] = cls.build(app)
        return state

    @classmethod
    def build(cls, app: Flask) -> _AppState:
        if not app.secret_key:
            raise RuntimeError("CeleryWithContext signs request contexts with SECRET_KEY; set it")
        # Newest key last, as itsdangerous and Flask's sessions expect; all verify.
        keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or []), app.secret_key]
        return cls(
            settings=ContextSettings.from_config(app.config),
            signer=_ContextSigner(keys, salt=_SIGNING_SALT),
        )


def sign_request_context(app: Flask) -> str | None:
    """Capture the active request and sign it: the value of :data:`CONTEXT_HEADER`."""
    state = _AppState.for_app(app)
    context = capture_request(state.settings)
    encoded = _encode(context)
    if len(encoded) > state.settings.max_bytes:
        encoded = _shrink_to_fit(context, encoded, state.settings)
        if encoded is None:
            return None
    return state.signer.sign(encoded).decode("utf-8")


def verify_request_context(app: Flask, token: Any) -> dict[str, Any]:
    """Check the signature and shape of a carried context; raise :class:`ContextRefused`."""
    if not isinstance(token, str) or not token:
        raise ContextRefused(
            f"request context header must be a signed string, found {type(token).__name__}"
        )
    state = _AppState.for_app(app)
    # Capture never sends more than max_bytes bytes of payload; the signature adds 28.
    limit = state.settings.max_bytes + 256
    if len(token) > limit:
        raise ContextRefused(f"request context is {len(token)} characters, above the limit of {limit}")
    try:
        payload = state.signer.unsign(token)
    except BadSignature:
        if _is_bare_json(token):
            raise ContextRefused("request context is unsigned") from None
        raise ContextRefused(
            "request context signature does not match: tampered, truncated or signed with another secret"
        ) from None
    try:
        context = _decode(payload)
    except ValueError:
        raise ContextRefused("request context is signed but its payload is not valid JSON") from None
    _check_shape(context)
    return context


def _is_bare_json(token: str) -> bool:
    try:
        _decode(token)
    except ValueError:
        return False
    return True


def _check_shape(context: Any) -> None:
    if not isinstance(context, dict):
        raise ContextRefused(f"request context must be an object, found {type(context).__name__}")
    if context.get("v") != _FORMAT_VERSION:
        raise ContextRefused(
            f"request context format version {context.get('v')!r} is not supported "
            f"(expected {_FORMAT_VERSION})"
        )
    carried = context.get("e")
    if type(carried) is not dict or not _STR_TYPES.issuperset(map(type, carried.values())):
        raise ContextRefused("request context environ must map strings to strings")
    form = context.get("f")
    if form is not None:
        if type(form) is not list:
            raise ContextRefused("request context form must be a list of [name, value] string pairs")
        for pair in form:  # a plain loop: this runs for every task
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str:
                raise ContextRefused("request context form must be a list of [name, value] string pairs")
    # Replay decodes these: a bad one must be refused here, not crash the task later.
    if "b" in context and type(context["b"]) is not str:
        raise ContextRefused("request context body must be a string")
    if "b64" in context:
        try:
            base64.b64decode(context["b64"], validate=True)
        except (TypeError, ValueError):  # binascii.Error is a ValueError
            raise ContextRefused("request context binary body must be base64") from None
    if "u" in context and type(context["u"]) is not str:
        raise ContextRefused("request context user id must be a string")


# --- replay ------------------------------------------------------------------------------


def _environ_from_context(context: Mapping[str, Any], token: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        **_WSGI_CONSTANTS,
        **context["e"],
    }
    if "b" in context:
        body = context["b"].encode("utf-8")
    elif "b64" in context:
        body = base64.b64decode(context["b64"])
    else:
        body = b""
    environ["wsgi.input"] = BytesIO(body)
    environ[ENVIRON_TOKEN_KEY] = token
    return environ


@contextmanager
def replay_request(app: Flask, context: Mapping[str, Any], token: str) -> Iterator[RequestContext]:
    """Run the body of the ``with`` inside the request a verified context describes.

    On a normal exit the app's ``after_request`` hooks run on an empty 200 response,
    whatever the task returned; teardown hooks run in every case.
    """
    environ = _environ_from_context(context, token)
    replayed = app.request_class(environ)
    replayed.json_module = app.json
    form = context.get("f")
    if form is not None:
        # The body was parsed in the view; hand werkzeug the parsed form directly.
        replayed.__dict__.update(form=ImmutableMultiDict(form), files=ImmutableMultiDict(), stream=BytesIO())
    # No cookie is carried, so the session starts empty (and nothing is decoded).
    session = app.session_interface.session_class() if _plain_session_interface(app) else None
    with RequestContext(app, environ, request=replayed, session=session) as ctx:
        user_id = context.get("u")
        if user_id is not None:
            _restore_user(app, user_id)
        yield ctx
        _run_after_request_hooks(app, app.response_class())


def _plain_session_interface(app: Flask) -> bool:
    return type(app.session_interface) is SecureCookieSessionInterface


def _run_after_request_hooks(app: Flask, response: Any) -> Any:
    """``app.process_response`` without saving the session: the response reaches no
    browser, so a cookie would go nowhere and a server-side session would be written for
    nobody. An app that overrides ``process_response`` gets its own, in full."""
    if type(app).process_response is not Flask.process_response:
        return app.process_response(response)
    ctx = _cv_request.get()
    for hook in ctx._after_request_functions:
        response = app.ensure_sync(hook)(response)
    hooks = app.after_request_funcs
    for name in chain(ctx.request.blueprints, (None,)):
        for hook in reversed(hooks.get(name, ())):
            response = app.ensure_sync(hook)(response)
    return response


def _restore_user(app: Flask, user_id: str) -> None:
    # The session cookie is not carried: load the sender through Flask-Login's loader.
    login_manager = getattr(app, "login_manager", None)
    if login_manager is None or login_manager._user_callback is None:
        return
    login_manager._update_request_context_with_user(login_manager._user_callback(user_id))


# --- the Celery app and its Task class ---------------------------------------------------


def current_context_token() -> str | None:
    """The signed context a task sent now would carry: the live request's (captured
    once per request), or the running task's; None outside both."""
    ctx = _cv_request.get(None)
    if ctx is not None:
        environ = ctx.request.environ
        token = environ.get(ENVIRON_TOKEN_KEY)
        if token is None:
            token = sign_request_context(ctx.app)
            if token is not None:
                environ[ENVIRON_TOKEN_KEY] = token
        return token
    running = _current_celery_task._get_current_object()
    if running is not None:
        return _header_from(running.request)
    return None


def _header_from(celery_request: Any) -> str | None:
    """Our header, wherever this Celery version or tool put it."""
    if celery_request is None:
        return None
    value = getattr(celery_request, CONTEXT_HEADER, None)
    if value is not None:
        return value
    headers = getattr(celery_request, "headers", None)
    if isinstance(headers, Mapping):
        value = headers.get(CONTEXT_HEADER)
        if value is None and isinstance(headers.get("headers"), Mapping):
            value = headers["headers"].get(CONTEXT_HEADER)
    return value


class ContextTask(Task):
    """A task that carries the sending request to the worker and runs inside it."""

    def _flask_app(self) -> Flask:
        if has_app_context():
            return current_app._get_current_object()
        app = getattr(self.app, "flask_app", None)
        if app is None:
            raise RuntimeError(
                "CeleryWithContext has no Flask app: call celery.init_app(app) "
                "(create_app() does) before running tasks"
            )
        return app

    def _with_context_header(self, headers: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        token = current_context_token()
        if token is None:
            return headers
        return {**headers, CONTEXT_HEADER: token} if headers else {CONTEXT_HEADER: token}

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None,
                    link_error=None, shadow=None, **options):
        options["headers"] = self._with_context_header(options.get("headers"))
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)

    def apply(self, args=None, kwargs=None, link=None, link_error=None, task_id=None,
              retries=None, throw=None, logfile=None, loglevel=None, headers=None, **options):
        headers = self._with_context_header(headers)
        return super().apply(args, kwargs, link, link_error, task_id, retries, throw,
                             logfile, loglevel, headers, **options)

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None,
              max_retries=None, **options):
        # Merge rather than pass headers= twice: Celery re-sends the request's own headers.
        inherited = self.request.headers if isinstance(self.request.headers, Mapping) else {}
        options["headers"] = self._with_context_header({**inherited, **(options.get("headers") or {})})
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def __call__(self, *args, **kwargs):
        if has_request_context():
            # Called or applied inside a live (or replayed) request: run right there.
            return self._run(args, kwargs)
        app = self._flask_app()
        token = _header_from(self.request_stack.top)
        if token is None:
            with app.app_context():
                return self._run(args, kwargs)
        try:
            context = verify_request_context(app, token)
        except ContextRefused as exc:
            logger.error("Refusing to run task %s[%s]: %s", self.name, self.request.id, exc)
            raise
        with replay_request(app, context, token):
            return self._run(args, kwargs)

    def _run(self, args, kwargs):
        top = self.request_stack.top
        if top is not None and not top.called_directly:
            # The worker's tracer (or apply()) already pushed this task's request.
            return self.run(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class CeleryWithContext(Celery):
    """A Celery app whose tasks run inside the Flask request (or app) that sent them."""

    task_cls = ContextTask

    def __init__(self, main: str | None = None, **kwargs: Any) -> None:
        super().__init__(main, **kwargs)
        self.flask_app: Flask | None = None

    def init_app(self, app: Flask) -> None:
        """Bind to ``app``: configure from ``app.config``; the latest bound app runs tasks."""
        previous = (self.conf.broker_url, self.conf.result_backend) if self.flask_app is not None else None
        self.conf.update(celery_settings(app.config))
        if previous is not None and previous != (self.conf.broker_url, self.conf.result_backend):
            self._forget_connections()
        self.flask_app = app
        app.extensions["celery"] = self
        app.extensions["celery_with_context"] = _AppState.build(app)


    def _forget_connections(self) -> None:
        """Drop pools and the result backend bound to the previous broker, as Celery does
        after a fork; otherwise messages would still go to the old one."""
        self._pool = None
        amqp = self.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None
        self._backend_cache = None
        self._local.__dict__.pop("backend", None)


def celery_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's settings (lower-case names) from the Flask config."""
    visibility_timeout = int(config.get("BROKER_VISIBILITY_TIMEOUT", 7200))
    # Workers hand back messages unacknowledged past the visibility timeout when they
    # start, then every unacked_restore_interval x unacked_restore_throttle seconds:
    # kombu's 10 x 10 whatever the timeout, so with a timeout of a few seconds a crashed
    # worker's task still waited up to 100 s for a running worker to take it back.
    # Look every tenth of the timeout instead, between once a second and every 100 s.
    restore_every = max(1, min(100, visibility_timeout // 10))
    restore_interval = min(10, restore_every)
    settings = {
        "broker_url": config["CELERY_BROKER_URL"],
        "result_backend": config["CELERY_RESULT_BACKEND"],
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": False,
        "result_expires": 7 * 24 * 3600,
        "task_track_started": True,
        "task_time_limit": config.get("CELERY_TASK_TIME_LIMIT"),
        "task_soft_time_limit": config.get("CELERY_TASK_SOFT_TIME_LIMIT"),
        # At-least-once: a task is acknowledged when it ends, and one whose worker died
        # (SIGKILL, OOM) goes back to the queue; unacknowledged messages return after the
        # visibility timeout (Redis), which must exceed the longest countdown/eta we use.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": restore_every // restore_interval,
        },
        "broker_connection_retry_on_startup": True,
        # A web request must not hang on a dead broker: fail within about a second.
        "broker_connection_timeout": 2.0,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0,
                                      "interval_step": 0.25, "interval_max": 0.5},
        # Sending subscribes to the task's result; don't spend Celery's default ~20 s on it.
        # Workers get the patient default back at start-up (app.tasks).
        "result_backend_transport_options": {"retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5,
        }},
        "worker_hijack_root_logger": True,
        "enable_utc": True,
        "timezone": "UTC",
        # Exports and emails have queues of their own, so each can get its own workers
        # (`worker -Q exports`, `-Q mail`); a worker started without -Q consumes all three.
        "task_default_queue": "celery",
        "task_queues": tuple(Queue(name) for name in ("celery", "exports", "mail")),
        "task_routes": {
            "app.tasks.export_posts": {"queue": "exports"},
            "app.tasks.send_welcome_email": {"queue": "mail"},
            "app.tasks.send_email_task": {"queue": "mail"},
        },
        "beat_schedule": {
            "cleanup-exports": {"task": "app.tasks.cleanup_exports",
                                "schedule": float(config.get("EXPORT_CLEANUP_INTERVAL", 3600.0))},
            "requeue-stalled-emails": {"task": "app.tasks.requeue_stalled_emails",
                                       "schedule": float(config.get("EMAIL_REQUEUE_INTERVAL", 300.0))},
        },
    }
    settings.update(config.get("CELERY") or {})
    return settings
