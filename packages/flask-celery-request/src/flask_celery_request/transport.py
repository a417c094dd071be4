"""Step two: the captured request travels sealed, in one message header.

Sealing is AES-256-GCM (``cryptography``), an authenticated cipher: nothing of the
request is readable in the broker, the result backend, Flower, logs or backups, and a
changed byte is detected. The key is derived from ``SECRET_KEY`` with HKDF-SHA256;
``SECRET_KEY_FALLBACKS`` still open contexts sealed before a key rotation.

A token is ``fcr1.`` and the URL-safe base64 of::

    key id (4) | ciphertext length (4) | nonce (12) | ciphertext and tag

The key id says which key sealed it (so "another secret" can be told from
"tampered"), the length tells a truncated token from a tampered one; both are
authenticated with the ciphertext. The plaintext is JSON: the captured request and
``t``, the time it was sealed, checked against ``CELERY_CONTEXT_MAX_AGE``.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import time
from collections.abc import Iterable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .settings import ContextSettings

#: The message header that carries the sealed request context.
CONTEXT_HEADER = "flask_request_context"

PREFIX = "fcr1."
_HEADER = struct.Struct(">4sI12s")
_TAG_BYTES = 16
_URLSAFE_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_HKDF_SALT = b"flask-celery-request"


class ContextRefused(Exception):
    """A carried request context was not accepted; the message says why (expired,
    tampered, truncated, oversized, sealed with another secret, malformed)."""


def _derive(secret: str | bytes, info: bytes, length: int) -> bytes:
    material = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(material)


def _encode(value: Any) -> bytes:
    # orjson: the json module costs several times more, on every request that sends a
    # task. A lone surrogate (a JSON body's ``"\ud800"``), which UTF-8 cannot hold,
    # falls back to ASCII JSON with escapes.
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _decode(plaintext: bytes) -> Any:
    try:
        return orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        return json.loads(plaintext)  # _encode's fallback, or ValueError


class Sealer:
    """Seals and opens the contexts of one Flask app."""

    def __init__(self, secret_keys: Iterable[str | bytes], settings: ContextSettings) -> None:
        """``secret_keys``: the current key first, then the fallbacks."""
        self.settings = settings
        self._keys: dict[bytes, AESGCM] = {}
        for secret in secret_keys:
            key_id = _derive(secret, b"context key id", 4)
            self._keys.setdefault(key_id, AESGCM(_derive(secret, b"context encryption key", 32)))
        if not self._keys:
            raise ValueError("Sealer needs at least one secret key")
        self._sealing_id = next(iter(self._keys))
        # What capture may produce, sealed and encoded, and a little slack.
        self.max_token_chars = len(PREFIX) + 4 * ((_HEADER.size + settings.max_bytes + 64 + _TAG_BYTES) // 3 + 1)

    def encode(self, context: dict[str, Any]) -> bytes:
        """The plaintext of a context: what :attr:`ContextSettings.max_bytes` limits."""
        return _encode(context)

    def seal(self, plaintext: bytes, now: float | None = None) -> str:
        """A token for ``plaintext`` (from :meth:`encode`), stamped with the time."""
        stamp = b'{"t":%d' % int(time.time() if now is None else now)
        stamped = stamp + (b"}" if plaintext == b"{}" else b"," + plaintext[1:])
        nonce = os.urandom(12)
        header = _HEADER.pack(self._sealing_id, len(stamped) + _TAG_BYTES, nonce)
        sealed = self._keys[self._sealing_id].encrypt(nonce, stamped, PREFIX.encode() + header)
        return PREFIX + base64.urlsafe_b64encode(header + sealed).rstrip(b"=").decode("ascii")

    def open(self, token: Any, now: float | None = None) -> dict[str, Any]:
        """The context a token carries; :class:`ContextRefused` saying why if none."""
        if not isinstance(token, str) or not token:
            found = "an empty string" if token == "" else type(token).__name__
            raise ContextRefused(f"request context header must be a sealed string, found {found}")
        if len(token) > self.max_token_chars:
            raise ContextRefused(f"request context is oversized: {len(token)} characters, "
                                 f"above the limit of {self.max_token_chars}")
        if not token.startswith(PREFIX):
            raise ContextRefused(_unknown_format(token))
        try:
            body = token[len(PREFIX):].encode("ascii")
            if body.translate(None, _URLSAFE_ALPHABET):
                # urlsafe_b64decode would skip such characters and read the rest.
                raise ValueError("not in the URL-safe base64 alphabet")
            raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ContextRefused("request context is malformed or truncated: not base64") from None
        if len(raw) < _HEADER.size + _TAG_BYTES:
            raise ContextRefused(f"request context is truncated: {len(raw)} bytes")
        key_id, length, nonce = _HEADER.unpack_from(raw)
        sealed = raw[_HEADER.size:]
        aead = self._keys.get(key_id)
        if aead is None:
            raise ContextRefused("request context was sealed with another secret: "
                                 "neither SECRET_KEY nor any of SECRET_KEY_FALLBACKS")
        if len(sealed) < length:
            raise ContextRefused(f"request context is truncated: {len(sealed)} of {length} bytes")
        try:
            if len(sealed) > length:
                raise InvalidTag
            plaintext = aead.decrypt(nonce, sealed, PREFIX.encode() + raw[:_HEADER.size])
        except InvalidTag:
            raise ContextRefused("request context was tampered with: it does not authenticate") from None
        try:
            context = _decode(plaintext)
        except (ValueError, RecursionError):
            raise ContextRefused("request context decrypts but is not JSON") from None
        check_shape(context)
        age = (time.time() if now is None else now) - context.pop("t")
        if age > self.settings.max_age:
            raise ContextRefused(f"request context has expired: sealed {int(age)} s ago, "
                                 f"above CELERY_CONTEXT_MAX_AGE={self.settings.max_age}")
        return context


def _unknown_format(token: str) -> str:
    # The format of app.celery_context, which this package replaces: itsdangerous-signed
    # JSON, "{...}.signature".
    if token.startswith("{"):
        return ("request context is in the signed, unencrypted format of an earlier release; "
                "this version accepts only sealed contexts (see the README, 'Upgrading')")
    return "request context is in an unknown format"


def check_shape(context: Any) -> None:
    """Refuse anything capture would not have produced: replay must not crash on it."""
    if type(context) is not dict:
        raise ContextRefused(f"request context must be an object, found {type(context).__name__}")
    if type(context.get("t")) is not int:
        raise ContextRefused("request context has no time of sealing")
    environ = context.get("e")
    if type(environ) is not dict or any(type(value) is not str for value in environ.values()):
        raise ContextRefused("request context environ must map strings to strings")
    form = context.get("f")
    if form is not None and (type(form) is not list or any(
            type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str
            for pair in form)):
        raise ContextRefused("request context form must be a list of [name, value] string pairs")
    if "b" in context and type(context["b"]) is not str:
        raise ContextRefused("request context body must be a string")
    if "b64" in context:
        try:
            base64.b64decode(context["b64"], validate=True)
        except (TypeError, ValueError):
            raise ContextRefused("request context binary body must be base64") from None
    if "u" in context and type(context["u"]) is not str:
        raise ContextRefused("request context user id must be a string")
    if "v" in context and type(context["v"]) is not dict:
        raise ContextRefused("request context carried values must be an object")
