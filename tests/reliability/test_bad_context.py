"""Bad context: every way a carried request context can be wrong, refused by the real worker.

The promise (Flask-Celery-Request, transport.py): a context that is expired, forged,
sealed with another secret, tampered, truncated, malformed, oversized, or in the signed
format of the microblog's earlier carrier (app/celery_context.py) is refused with
:class:`ContextRefused` naming the problem, logged as ``Refusing to run task
<name>[<id>]: <reason>``, and the worker goes on serving.

Each message here is published by hand (``celery.send_task`` with the header set), as
anyone with access to the broker could, or as a message left in the queue by the earlier
release: that bypasses our Task class, so nothing on the sending side fixes or drops the
header. The worker is the live stack's real process. The last tests send all of them
back to back and check that the *same* worker (same main and pool process ids, answering
ping) then runs a task sent from a real request exactly as that request was.

tests/test_carrier_worker.py checks the same path for a handful of forgeries; this
module is the complete list, oversized contexts included.
"""
from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass

import pytest
from celery.result import AsyncResult
from flask import request
from flask_celery_request import CONTEXT_HEADER, ContextRefused
from flask_celery_request.capture import capture_request
from flask_celery_request.task import seal_current_request
from flask_celery_request.transport import Sealer
from itsdangerous import Signer

from app.extensions import celery
from tests.support.probe_tasks import describe_request
from tests.support.services import wait_until
from tests.test_carrier_worker import _expected, _send_from_request, probe_app  # noqa: F401 (fixture)

TIMEOUT = 30
TWO_MB = 2 * 1024 * 1024
PREFIX = "fcr1."
#: The salt of app/celery_context.py, the carrier before Flask-Celery-Request: its
#: contexts were itsdangerous-signed (HMAC-SHA1), unencrypted JSON.
EARLIER_SALT = "celery-with-context.v1"
#: What the live stack's defaults allow: CELERY_CONTEXT_MAX_BYTES=65536 of plaintext, sealed.
TOKEN_LIMIT = 87521
MAX_AGE = 7 * 24 * 3600
EIGHT_DAYS_AGO = 8 * 86400


@dataclass(frozen=True)
class Bad:
    problem: str
    reason: str  # what the ContextRefused message and the worker's log line must say
    pattern: bool = False  # ``reason`` is a regular expression (a number in it varies)

    def token(self, app):
        return _TOKENS[self.problem](app)

    def regex(self) -> str:
        return self.reason if self.pattern else re.escape(self.reason)

    def matches(self, message: str) -> bool:
        return re.fullmatch(self.regex(), message) is not None


# --- building the tokens ------------------------------------------------------------------


def _state(app):
    return app.extensions["flask_celery_request"]


def _good(app) -> str:
    with app.test_request_context("/probe/bad?x=1", base_url="https://good.example/",
                                  headers={"X-Request-Id": "r-1"}):
        return seal_current_request()


def _captured_plaintext(app) -> bytes:
    """What capture makes of a real request, before sealing."""
    with app.test_request_context("/probe/bad?x=1", base_url="https://good.example/",
                                  headers={"X-Request-Id": "r-1"}):
        captured = capture_request(request._get_current_object(), _state(app).settings, None)
    return _state(app).sealer.encode(captured)


def _sealed(app, document) -> str:
    """Sealed with our secret (so it authenticates); ``seal`` adds the time of sealing."""
    plaintext = document if isinstance(document, bytes) else json.dumps(document).encode()
    return _state(app).sealer.seal(plaintext)


def _raw(token: str) -> bytearray:
    body = token[len(PREFIX):]
    return bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _token(raw: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _flipped(app, index: int) -> str:
    """A good token with one bit of byte ``index`` of its binary form changed. The layout
    (transport.py): key id 0-3, ciphertext length 4-7, nonce 8-19, ciphertext and tag."""
    raw = _raw(_good(app))
    raw[index] ^= 1
    return _token(raw)


def _length_field(app, delta: int) -> str:
    raw = _raw(_good(app))
    length = int.from_bytes(raw[4:8], "big")
    raw[4:8] = (length + delta).to_bytes(4, "big")
    return _token(raw)


def _spliced(app) -> str:
    """The header (key id, length, nonce) of one good token, the ciphertext of another."""
    first, second = _raw(_good(app)), _raw(_good(app))
    return _token(first[:20] + second[20:])


def _cut(app, characters: int) -> str:
    return _good(app)[:characters]


def _cut_to_half(app) -> str:
    good = _good(app)
    body = good[len(PREFIX):]
    return PREFIX + body[: len(body) // 2 // 4 * 4]  # whole base64 quanta: decodes, too short


def _earlier_signed_format(app, host: str = "evil.example") -> str:
    return Signer([app.secret_key], salt=EARLIER_SALT).sign(
        json.dumps({"v": 1, "e": {"HTTP_HOST": host}})).decode()


def _sealed_of_length(app, length: int) -> str:
    """A valid context, sealed with our secret, padded with a header to exactly ``length`` characters."""
    document = {"e": {"HTTP_HOST": "good.example", "HTTP_X_PAD": ""}}
    bare = len(_sealed(app, document))
    pad = max(0, (length - bare) * 3 // 4 - 3)
    while True:
        document["e"]["HTTP_X_PAD"] = "p" * pad
        token = _sealed(app, document)
        if len(token) >= length:
            break
        pad += 1
    assert len(token) == length, (len(token), length)
    return token


def _largest_capture_may_send(app) -> str:
    """A context whose plaintext is exactly CELERY_CONTEXT_MAX_BYTES, what capture may send at most."""
    sealer, limit = _state(app).sealer, _state(app).settings.max_bytes
    document = {"e": {"HTTP_HOST": "good.example", "HTTP_X_PAD": ""}}
    document["e"]["HTTP_X_PAD"] = "p" * (limit - len(sealer.encode(document)))
    plaintext = sealer.encode(document)
    assert len(plaintext) == limit
    return sealer.seal(plaintext)


_TOKENS = {
    # the earlier carrier's format, and other formats
    "earlier format: itsdangerous-signed JSON": _earlier_signed_format,
    "earlier format: unsigned JSON": lambda app: json.dumps({"v": 1, "e": {"HTTP_HOST": "evil.example"}}),
    "unknown format": lambda app: "not json at all.signature",
    "another prefix": lambda app: "fcr2." + _good(app)[len(PREFIX):],
    "not base64": lambda app: PREFIX + "caf\u00e9",
    # base64 decoders skip characters outside the alphabet and read the rest: not here.
    "a junk character inside": lambda app: (lambda good: good[:40] + "!" + good[40:])(_good(app)),
    # not a string
    "empty string": lambda app: "",
    "a number": lambda app: 12345,
    "a list": lambda app: ["a", "list"],
    "an object": lambda app: {"e": {}},
    # forged
    "sealed with another secret": lambda app: Sealer(["another-secret-entirely"], _state(app).settings)
    .seal(json.dumps({"e": {"HTTP_HOST": "evil.example"}}).encode()),
    "key id changed": lambda app: _flipped(app, 0),
    "nonce changed": lambda app: _flipped(app, 10),
    "ciphertext changed": lambda app: _flipped(app, 40),
    "tag changed": lambda app: _flipped(app, -1),
    "length field shortened": lambda app: _length_field(app, -1),
    "ciphertext of another token": _spliced,
    "a byte appended": lambda app: _token(_raw(_good(app)) + b"\0"),
    # truncated
    "cut to the prefix": lambda app: _cut(app, len(PREFIX)),
    "cut inside the header": lambda app: _cut(app, len(PREFIX) + 24),
    "cut to half": _cut_to_half,
    "last four characters cut": lambda app: _good(app)[:-4],
    "length field lengthened": lambda app: _length_field(app, 1),
    # sealed with our secret, but malformed
    "sealed, not JSON": lambda app: _sealed(app, b"{not json"),
    # seal() puts its own "t" first; JSON keeps the last of duplicate keys: this one.
    "sealed, time of sealing not a number": lambda app: _sealed(app, b'{"t":"soon","e":{}}'),
    "sealed, no environ": lambda app: _sealed(app, {"f": []}),
    "sealed, environ not an object": lambda app: _sealed(app, {"e": ["HTTP_HOST", "x"]}),
    "sealed, environ value not a string": lambda app: _sealed(app, {"e": {"HTTP_HOST": 5}}),
    "sealed, form not pairs": lambda app: _sealed(app, {"e": {}, "f": [["a", "b", "c"]]}),
    "sealed, body not a string": lambda app: _sealed(app, {"e": {}, "b": 5}),
    "sealed, binary body not base64": lambda app: _sealed(app, {"e": {}, "b64": "not base64!"}),
    "sealed, user id not a string": lambda app: _sealed(app, {"e": {}, "u": {"id": 1}}),
    # expired
    "sealed eight days ago": lambda app: _state(app).sealer.seal(_captured_plaintext(app),
                                                                now=time.time() - EIGHT_DAYS_AGO),
    # oversized
    "2 MB string": lambda app: "x" * TWO_MB,
    "2 MB, validly sealed": lambda app: _sealed_of_length(app, TWO_MB),
    # A token is the prefix and unpadded base64: no length of the form 5 + 4n + 1, so
    # TOKEN_LIMIT + 1 (87522) is not one; the shortest above the limit is TOKEN_LIMIT + 2.
    "the shortest above the limit, validly sealed": lambda app: _sealed_of_length(app, TOKEN_LIMIT + 2),
}

EARLIER = ("request context is in the signed, unencrypted format of an earlier release; "
           "this version accepts only sealed contexts (see the README, 'Upgrading')")
TAMPERED = "request context was tampered with: it does not authenticate"
ANOTHER_SECRET = ("request context was sealed with another secret: "
                  "neither SECRET_KEY nor any of SECRET_KEY_FALLBACKS")
NOT_BASE64 = "request context is malformed or truncated: not base64"
#: The age is counted when the worker opens it: seconds (or, on a busy machine, more) after eight days.
EXPIRED = rf"request context has expired: sealed 69\d{{4}} s ago, above CELERY_CONTEXT_MAX_AGE={MAX_AGE}"


def _oversized(length: int) -> str:
    return f"request context is oversized: {length} characters, above the limit of {TOKEN_LIMIT}"


BAD_CONTEXTS = [
    Bad("earlier format: itsdangerous-signed JSON", EARLIER),
    Bad("earlier format: unsigned JSON", EARLIER),
    Bad("unknown format", "request context is in an unknown format"),
    Bad("another prefix", "request context is in an unknown format"),
    Bad("not base64", NOT_BASE64),
    Bad("a junk character inside", NOT_BASE64),
    Bad("empty string", "request context header must be a sealed string, found an empty string"),
    Bad("a number", "request context header must be a sealed string, found int"),
    Bad("a list", "request context header must be a sealed string, found list"),
    Bad("an object", "request context header must be a sealed string, found dict"),
    Bad("sealed with another secret", ANOTHER_SECRET),
    Bad("key id changed", ANOTHER_SECRET),
    Bad("nonce changed", TAMPERED),
    Bad("ciphertext changed", TAMPERED),
    Bad("tag changed", TAMPERED),
    Bad("length field shortened", TAMPERED),
    Bad("ciphertext of another token", TAMPERED),
    Bad("a byte appended", TAMPERED),
    Bad("cut to the prefix", "request context is truncated: 0 bytes"),
    Bad("cut inside the header", "request context is truncated: 18 bytes"),
    Bad("cut to half", r"request context is truncated: \d+ of \d+ bytes", pattern=True),
    Bad("last four characters cut", r"request context is truncated: (\d+) of (\d+) bytes", pattern=True),
    Bad("length field lengthened", r"request context is truncated: (\d+) of (\d+) bytes", pattern=True),
    Bad("sealed, not JSON", "request context decrypts but is not JSON"),
    Bad("sealed, time of sealing not a number", "request context has no time of sealing"),
    Bad("sealed, no environ", "request context environ must map strings to strings"),
    Bad("sealed, environ not an object", "request context environ must map strings to strings"),
    Bad("sealed, environ value not a string", "request context environ must map strings to strings"),
    Bad("sealed, form not pairs", "request context form must be a list of [name, value] string pairs"),
    Bad("sealed, body not a string", "request context body must be a string"),
    Bad("sealed, binary body not base64", "request context binary body must be base64"),
    Bad("sealed, user id not a string", "request context user id must be a string"),
    Bad("sealed eight days ago", EXPIRED, pattern=True),
    Bad("2 MB string", _oversized(TWO_MB)),
    Bad("2 MB, validly sealed", _oversized(TWO_MB)),
    Bad("the shortest above the limit, validly sealed", _oversized(TOKEN_LIMIT + 2)),
]
assert {bad.problem for bad in BAD_CONTEXTS} == set(_TOKENS)


def worker_identity(live_stack) -> tuple[int, int, tuple[int, ...]]:
    """(main pid as started, main pid as the worker reports it, its pool's pids); asserts it answers ping."""
    worker = live_stack.worker
    assert worker.process.poll() is None, f"the worker exited with {worker.process.returncode}"
    # Polled, not waited for: a busy machine may miss one reply, never thirty seconds of them.
    pong = wait_until(lambda: celery.control.ping(destination=[worker.hostname], timeout=1), TIMEOUT,
                      message=f"worker {worker.hostname} to answer ping")
    assert pong == [{worker.hostname: {"ok": "pong"}}], pong
    stats = wait_until(lambda: celery.control.inspect(destination=[worker.hostname], timeout=1).stats(),
                       TIMEOUT, message=f"worker {worker.hostname} to report its stats")
    mine = stats[worker.hostname]
    return worker.process.pid, mine["pid"], tuple(sorted(mine["pool"]["processes"]))


def publish_by_hand(token) -> AsyncResult:
    """As someone with broker access would: our Task class never sees this message."""
    return celery.send_task(describe_request.name, headers={CONTEXT_HEADER: token})


def refusal_logged(live_stack, result: AsyncResult, bad: Bad) -> bool:
    task = rf"{re.escape(describe_request.name)}\[{re.escape(result.id)}\]"
    line = rf"Refusing to run task {task}: {bad.regex()}$"
    return re.search(line, live_stack.worker.log(), re.MULTILINE) is not None


def test_the_test_tokens_are_what_they_claim(live_app):
    """Each is refused in this process for the reason the worker must give; the sealed
    ones do authenticate (refused for their content, not their seal); the oversized ones
    are over the limit by construction."""
    sealer = _state(live_app).sealer
    # The live stack runs with the default CELERY_CONTEXT_MAX_BYTES and CELERY_CONTEXT_MAX_AGE.
    assert sealer.max_token_chars == TOKEN_LIMIT
    assert _state(live_app).settings.max_age == MAX_AGE
    tokens = {bad.problem: bad.token(live_app) for bad in BAD_CONTEXTS}
    assert len(tokens["2 MB string"]) == len(tokens["2 MB, validly sealed"]) == TWO_MB
    assert len(tokens["the shortest above the limit, validly sealed"]) == TOKEN_LIMIT + 2
    assert Signer([live_app.secret_key], salt=EARLIER_SALT).unsign(
        tokens["earlier format: itsdangerous-signed JSON"])  # what the earlier release verified
    for bad in BAD_CONTEXTS:
        with pytest.raises(ContextRefused) as refused:
            sealer.open(tokens[bad.problem])
        assert bad.matches(str(refused.value)), (bad.problem, str(refused.value))
        if bad.problem.startswith("sealed,") or bad.problem == "sealed eight days ago" \
                or "validly sealed" in bad.problem:
            assert "tampered" not in str(refused.value) and "another secret" not in str(refused.value)
    for bad in BAD_CONTEXTS:
        if bad.problem in ("last four characters cut", "length field lengthened"):
            have, want = map(int, re.fullmatch(bad.regex(), _refusal(sealer, tokens[bad.problem])).groups())
            assert have < want, bad.problem


def _refusal(sealer, token) -> str:
    try:
        sealer.open(token)
    except ContextRefused as exc:
        return str(exc)
    raise AssertionError("opened")


@pytest.mark.parametrize("bad", BAD_CONTEXTS, ids=lambda bad: bad.problem)
def test_the_worker_refuses_a_bad_context_naming_the_problem(live_app, live_stack, bad):
    result = publish_by_hand(bad.token(live_app))
    with pytest.raises(ContextRefused) as refused:
        result.get(timeout=TIMEOUT)
    assert bad.matches(str(refused.value)), str(refused.value)
    assert result.state == "FAILURE"
    assert refusal_logged(live_stack, result, bad), live_stack.worker.log()[-3000:]


def test_the_largest_context_capture_may_send_is_accepted(live_app):
    """The boundary of the size check: CELERY_CONTEXT_MAX_BYTES of plaintext, sealed, runs."""
    token = _largest_capture_may_send(live_app)
    assert len(token) <= TOKEN_LIMIT
    seen = publish_by_hand(token).get(timeout=TIMEOUT)["request"]
    assert seen["host"] == "good.example" and seen["path"] == "/"


def test_a_validly_sealed_context_of_exactly_the_limit_is_accepted(live_app):
    """The other side of the size check: TOKEN_LIMIT characters run, TOKEN_LIMIT + 2 are refused."""
    seen = publish_by_hand(_sealed_of_length(live_app, TOKEN_LIMIT)).get(timeout=TIMEOUT)["request"]
    assert seen["host"] == "good.example" and seen["path"] == "/"


def test_a_message_queued_in_the_earlier_signed_format_is_refused_then_a_valid_task_runs(
        probe_app, live_stack):
    """A message the earlier release left in the queue: the context of a real request, as
    app/celery_context.py captured and signed it (itsdangerous, not encrypted). The worker
    refuses it, saying it is that format, and the same worker then runs a valid task."""
    before = worker_identity(live_stack)
    with probe_app.test_request_context("/probe/queued-before-the-upgrade?page=2",
                                        base_url="https://blog.example.org/"):
        captured = capture_request(request._get_current_object(), _state(probe_app).settings, None)
    earlier = {"v": 1, **captured}  # the earlier format: the same mapping, with a version
    token = Signer([probe_app.secret_key], salt=EARLIER_SALT).sign(json.dumps(earlier)).decode()
    assert "blog.example.org" in token  # readable: why this format is refused

    result = publish_by_hand(token)
    with pytest.raises(ContextRefused) as refused:
        result.get(timeout=TIMEOUT)
    assert str(refused.value) == EARLIER
    assert "signed, unencrypted format of an earlier release" in str(refused.value)
    assert refusal_logged(live_stack, result, Bad("earlier", EARLIER))
    assert worker_identity(live_stack) == before

    client = probe_app.test_client()
    live, result = _send_from_request(client, "/probe/after-the-upgrade?page=2",
                                      base_url="https://blog.example.org/")
    assert result.get(timeout=TIMEOUT)["request"] == _expected(live)
    assert worker_identity(live_stack) == before


def test_an_expired_context_is_refused_naming_expiry(live_app, live_stack):
    """A real request's context sealed eight days ago, above CELERY_CONTEXT_MAX_AGE (seven
    days): refused, saying so; the same context sealed now runs."""
    sealer = _state(live_app).sealer
    plaintext = _captured_plaintext(live_app)
    result = publish_by_hand(sealer.seal(plaintext, now=time.time() - EIGHT_DAYS_AGO))
    with pytest.raises(ContextRefused) as refused:
        result.get(timeout=TIMEOUT)
    assert "request context has expired" in str(refused.value)
    assert f"CELERY_CONTEXT_MAX_AGE={MAX_AGE}" in str(refused.value)
    assert refusal_logged(live_stack, result, Bad("expired", EXPIRED, pattern=True))

    just_in_time = publish_by_hand(sealer.seal(plaintext, now=time.time() - MAX_AGE + 60))
    seen = just_in_time.get(timeout=TIMEOUT)["request"]
    assert (seen["host"], seen["path"], seen["query_string"]) == ("good.example", "/probe/bad", "x=1")


def test_the_same_worker_survives_every_bad_context_then_replays_a_real_request(probe_app, live_stack):
    before = worker_identity(live_stack)
    results = [(bad, publish_by_hand(bad.token(probe_app))) for bad in BAD_CONTEXTS]
    for bad, result in results:
        with pytest.raises(ContextRefused, match="^request context"):
            result.get(timeout=TIMEOUT)
        assert refusal_logged(live_stack, result, bad), bad.problem
    assert worker_identity(live_stack) == before

    client = probe_app.test_client()
    live, result = _send_from_request(
        client, "/probe/after-the-storm/caf%C3%A9?keep=1&empty=", method="POST",
        base_url="https://blog.example.org/", data={"note": "héllo", "password": "never carried"},
        headers={"X-Request-Id": "after", "Cookie": "s=1"},
        environ_base={"REMOTE_ADDR": "198.51.100.9"},
    )
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen == {**_expected(live), "form": [["note", "héllo"]]}
    assert seen["index_url"] == "https://blog.example.org/" and seen["remote_addr"] == "198.51.100.9"
    assert worker_identity(live_stack) == before


# --- oversized on the sending side: our Task class never sends an oversized context -----


def test_a_request_too_big_even_without_its_form_drops_headers_and_query(probe_app, caplog):
    client = probe_app.test_client()
    with caplog.at_level("WARNING", logger="flask_celery_request.capture"):
        live, result = _send_from_request(client, "/probe/huge-query?q=" + "q" * (70 * 1024),
                                          headers={"X-Big": "h" * 1024}, base_url="https://big.example/")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["query_string"] == "" and seen["args"] == []
    assert not any(name == "X-Big" for name, _ in seen["headers"])
    assert seen["path"] == live["path"] == "/probe/huge-query" and seen["index_url"] == "https://big.example/"
    (warning,) = [r.getMessage() for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
    assert "dropped the body, form, headers and query to fit" in warning


def test_a_request_whose_path_alone_is_too_big_is_sent_without_a_context(probe_app, caplog):
    client = probe_app.test_client()
    with caplog.at_level("WARNING", logger="flask_celery_request.capture"):
        live, result = _send_from_request(client, "/probe/" + "p" * (70 * 1024))
    assert live["path"].startswith("/probe/ppp")
    assert result.get(timeout=TIMEOUT)["request"] is None  # ran in an app context, not refused
    (warning,) = [r.getMessage() for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
    assert "sending the task without it" in warning
