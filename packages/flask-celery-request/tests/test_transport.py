"""Transport: the sealed token, and why each bad one is refused."""
from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import pytest
from flask import request

from conftest import b64decode_loose, make_app
from flask_celery_request import ContextRefused
from flask_celery_request.capture import capture_request
from flask_celery_request.settings import ContextSettings
from flask_celery_request.transport import PREFIX, Sealer, check_shape

SETTINGS = ContextSettings.from_config({"CELERY_CONTEXT_MAX_AGE": 3600})
CONTEXT = {"e": {"REQUEST_METHOD": "POST", "PATH_INFO": "/caf\u00e9", "HTTP_X_NOTE": "n"},
           "f": [["tag", "a"], ["tag", "b"]], "u": "7"}


def sealer(*secrets: str | bytes, settings: ContextSettings = SETTINGS) -> Sealer:
    return Sealer(secrets or ["the-secret"], settings)


def refusal(opener: Sealer, token: Any, **kwargs: Any) -> str:
    with pytest.raises(ContextRefused) as caught:
        opener.open(token, **kwargs)
    return str(caught.value)


def test_round_trip() -> None:
    s = sealer()
    assert s.open(s.seal(s.encode(CONTEXT))) == CONTEXT


def test_round_trip_of_a_lone_surrogate() -> None:
    """A JSON body may hold "\\ud800", which UTF-8 cannot: it must still travel."""
    s = sealer()
    context = {"e": {}, "b": '{"a":"\ud800"}'}
    assert s.open(s.seal(s.encode(context))) == context


def test_token_is_prefixed_url_safe_base64_and_fresh_each_time() -> None:
    s = sealer()
    plaintext = s.encode(CONTEXT)
    first, second = s.seal(plaintext), s.seal(plaintext)
    assert re.fullmatch(r"fcr1\.[A-Za-z0-9_-]+", first)
    assert first != second  # a fresh nonce per seal


def test_same_secret_opens_in_another_process() -> None:
    """The key is derived from SECRET_KEY alone: a worker with the same secret opens it."""
    assert sealer("k").open(sealer("k").seal(sealer("k").encode(CONTEXT))) == CONTEXT
    assert sealer(b"k").open(sealer("k").seal(sealer("k").encode(CONTEXT))) == CONTEXT  # bytes key


def test_expired() -> None:
    s = sealer()
    sealed_at = int(time.time()) - 10_000  # seal stamps whole seconds
    token = s.seal(s.encode(CONTEXT), now=sealed_at)
    message = refusal(s, token, now=sealed_at + 3601)
    assert message == "request context has expired: sealed 3601 s ago, above CELERY_CONTEXT_MAX_AGE=3600"
    assert s.open(token, now=sealed_at + 3600) == CONTEXT  # the limit itself is still valid


def test_expired_by_default_clock() -> None:
    s = sealer()
    token = s.seal(s.encode(CONTEXT), now=time.time() - 7200)
    assert "has expired: sealed 7200 s ago" in refusal(s, token)


def test_other_secret() -> None:
    token = sealer("old").seal(sealer("old").encode(CONTEXT))
    assert "was sealed with another secret" in refusal(sealer("new"), token)


def test_fallback_key_opens_and_current_key_seals() -> None:
    """Rotation: contexts sealed with a retired key still open; new ones use the new key."""
    old = sealer("old")
    rotated = sealer("new", "old")
    token = old.seal(old.encode(CONTEXT))
    assert rotated.open(token) == CONTEXT
    fresh = rotated.seal(rotated.encode(CONTEXT))
    assert sealer("new").open(fresh) == CONTEXT
    assert "another secret" in refusal(old, fresh)


def test_no_key_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one secret key"):
        Sealer([], SETTINGS)


def raw_of(token: str) -> bytearray:
    return bytearray(b64decode_loose(token[len(PREFIX):]))


def token_of(raw: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_tampered_byte_anywhere_after_the_key_id() -> None:
    """Each byte of length, nonce, ciphertext and tag is authenticated."""
    s = sealer()
    token = s.seal(s.encode(CONTEXT))
    raw = raw_of(token)
    for position in range(4, len(raw)):
        changed = raw.copy()
        changed[position] ^= 0x01
        message = refusal(s, token_of(changed))
        if 4 <= position < 8:  # the length field: a longer one reads as truncated
            assert "tampered with" in message or "truncated" in message, (position, message)
        else:
            assert message == "request context was tampered with: it does not authenticate", position


def test_tampered_key_id_reads_as_another_secret() -> None:
    s = sealer()
    raw = raw_of(s.seal(s.encode(CONTEXT)))
    raw[0] ^= 0xFF
    assert "another secret" in refusal(s, token_of(raw))


def test_bytes_appended() -> None:
    s = sealer()
    raw = raw_of(s.seal(s.encode(CONTEXT)))
    assert "tampered with" in refusal(s, token_of(raw + b"\0\0\0"))


def test_truncated_at_every_length() -> None:
    s = sealer()
    token = s.seal(s.encode(CONTEXT))
    for end in range(len(PREFIX), len(token)):
        message = refusal(s, token[:end])
        assert "truncated" in message, (end, message)
    body = len(token) - len(PREFIX)
    cut = token[:len(PREFIX) + (body // 2) // 4 * 4]  # a whole number of base64 quanta
    assert re.fullmatch(r"request context is truncated: \d+ of \d+ bytes", refusal(s, cut))


def test_oversized() -> None:
    s = sealer()
    message = refusal(s, PREFIX + "A" * (s.max_token_chars + 1))
    assert message.startswith("request context is oversized:")


def test_a_context_at_the_size_limit_is_not_oversized() -> None:
    """The token limit leaves room for the largest context capture sends."""
    s = sealer()
    filler = "x" * (SETTINGS.max_bytes - len(s.encode({"e": {}, "b": ""})))
    plaintext = s.encode({"e": {}, "b": filler})
    assert len(plaintext) == SETTINGS.max_bytes
    token = s.seal(plaintext)
    assert len(token) <= s.max_token_chars
    assert s.open(token)["b"] == filler


@pytest.mark.parametrize("token", [
    PREFIX + "\u00e9t\u00e9",                 # not ASCII
    PREFIX + "A",                             # one character past a quantum: no bytes
    PREFIX + "AAAA*AAAA",                     # outside the alphabet
    PREFIX + "AAAA AAAA",
    PREFIX + "AAAA+/AA",                      # standard, not URL-safe, base64
    PREFIX + "AAAA==",
])
def test_not_base64(token: str) -> None:
    assert refusal(sealer(), token) == "request context is malformed or truncated: not base64"


def test_junk_inside_a_good_token_is_refused() -> None:
    """A decoder that skipped non-alphabet characters would open this."""
    s = sealer()
    token = s.seal(s.encode(CONTEXT))
    assert "not base64" in refusal(s, token[:20] + "!" + token[20:])
    assert "not base64" in refusal(s, token + "\n")


def test_old_signed_format_is_named() -> None:
    old = '{"e":{"PATH_INFO":"/"}}.ZmFrZXNpZ25hdHVyZQ'
    message = refusal(sealer(), old)
    assert "signed, unencrypted format of an earlier release" in message


def test_unknown_format() -> None:
    assert refusal(sealer(), "fcr2.AAAA") == "request context is in an unknown format"


@pytest.mark.parametrize("token, kind", [(None, "NoneType"), (123, "int"), (b"fcr1.AAAA", "bytes"),
                                         ("", "an empty string"), ({"e": {}}, "dict")])
def test_not_a_string(token: Any, kind: str) -> None:
    assert refusal(sealer(), token) == f"request context header must be a sealed string, found {kind}"


@pytest.mark.parametrize("plaintext, reason", [
    (b"{not json", "decrypts but is not JSON"),
    (b"{}", "environ must map strings to strings"),
    (b'{"f":[]}', "environ must map strings to strings"),
    (b'{"e":[]}', "environ must map strings to strings"),
    (b'{"e":{"PATH_INFO":1}}', "environ must map strings to strings"),
    (b'{"e":{"PATH_INFO":null}}', "environ must map strings to strings"),
    (b'{"e":{},"f":"a=b"}', "form must be a list of [name, value] string pairs"),
    (b'{"e":{},"f":[["a"]]}', "form must be a list of [name, value] string pairs"),
    (b'{"e":{},"f":[["a",1]]}', "form must be a list of [name, value] string pairs"),
    (b'{"e":{},"f":[{"a":"b"}]}', "form must be a list of [name, value] string pairs"),
    (b'{"e":{},"b":5}', "body must be a string"),
    (b'{"e":{},"b64":"not base64!"}', "binary body must be base64"),
    (b'{"e":{},"b64":7}', "binary body must be base64"),
    (b'{"e":{},"u":42}', "user id must be a string"),
    (b'{"t":"yesterday","e":{}}', "has no time of sealing"),  # the plaintext's own "t" comes last
    (b'{"t":1.5,"e":{}}', "has no time of sealing"),
])
def test_wrong_shape_after_decryption(plaintext: bytes, reason: str) -> None:
    """Authentic but not what capture produces (a bug, or a key leaked): refused, not replayed."""
    s = sealer()
    assert refusal(s, s.seal(plaintext)) == f"request context {reason}"


@pytest.mark.parametrize("value, found", [([], "list"), ("x", "str"), (1, "int"), (None, "NoneType")])
def test_check_shape_wants_an_object(value: Any, found: str) -> None:
    with pytest.raises(ContextRefused, match=f"must be an object, found {found}"):
        check_shape(value)


def test_plaintext_never_appears_in_the_token() -> None:
    """Nothing of the request is readable in a broker: not as text, not base64-decoded."""
    app = make_app()
    values = {
        "path": "/reports/Quarterly-Zebra-Figures", "query": "needle=Saffron-Query-Value",
        "header": "Marmalade-Header-Value", "form": "Tangerine-Form-Value", "user": "user-Ocelot-9931",
    }
    with app.test_request_context(values["path"], query_string=values["query"], method="POST",
                                  data={"field": values["form"]}, headers={"X-Note": values["header"]}):
        context = capture_request(request, ContextSettings.from_config(app.config), values["user"])
    s = sealer()
    plaintext = s.encode(context)
    token = s.seal(plaintext)
    decoded = b64decode_loose(token[len(PREFIX):])
    strings = [*values.values(), *(piece for value in values.values() for piece in re.split(r"[-/=]", value)
                                   if len(piece) >= 5)]
    for value in strings:
        assert value.encode() in plaintext  # it was captured...
        assert value not in token and value.lower() not in token.lower()  # ...and is not readable
        assert value.encode() not in decoded
        assert base64.urlsafe_b64encode(value.encode()).rstrip(b"=").decode() not in token
    assert json.loads(plaintext)["u"] == values["user"]
