"""Bad context: every way a carried request context can be wrong, refused by the real worker.

The promise (app/celery_context.py): a forged, tampered, truncated, malformed or
oversized context is refused with :class:`ContextRefused` naming the problem, logged as
``Refusing to run task <name>[<id>]: <reason>``, and the worker goes on serving.

Each message here is published by hand (``celery.send_task`` with the header set), as
anyone with access to the broker could: that bypasses our Task class, so nothing on the
sending side fixes or drops the header. The worker is the live stack's real process.
The last tests send all of them back to back and check that the *same* worker (same
main and pool process ids, answering ping) then runs a task sent from a real request
exactly as that request was.

tests/test_celery_context_worker.py checks the same path for a handful of forgeries;
this module is the complete list, oversized contexts included.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from celery.result import AsyncResult
from itsdangerous import Signer

from app.celery_context import _SIGNING_SALT, CONTEXT_HEADER, ContextRefused, _AppState, sign_request_context
from app.extensions import celery
from tests.support.probe_tasks import describe_request
from tests.support.services import wait_until
from tests.test_celery_context_worker import _expected, _send_from_request, probe_app  # noqa: F401 (fixture)

TIMEOUT = 30
TWO_MB = 2 * 1024 * 1024


@dataclass(frozen=True)
class Bad:
    problem: str
    reason: str  # what the ContextRefused message and the worker's log line must say

    def token(self, app):
        return _TOKENS[self.problem](app)


def _good(app) -> str:
    with app.test_request_context("/probe/bad?x=1", base_url="https://good.example/",
                                  headers={"X-Request-Id": "r-1"}):
        return sign_request_context(app)


def _ours(app) -> Signer:
    return _AppState.for_app(app).signer


def _signed(app, document) -> str:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    return _ours(app).sign(payload).decode()


def _limit(app) -> int:
    # Documented in verify_request_context: what capture can produce, signed.
    return int(app.config["CELERY_CONTEXT_MAX_BYTES"]) + 256


def _signed_of_length(app, length: int) -> str:
    """A valid context, signed with our secret, padded with a header to exactly ``length`` characters."""
    document = {"v": 1, "e": {"HTTP_HOST": "good.example", "HTTP_X_PAD": ""}}
    bare = len(_signed(app, document))
    document["e"]["HTTP_X_PAD"] = "p" * (length - bare)
    token = _signed(app, document)
    assert len(token) == length
    return token


def _tampered(app) -> str:
    payload, _, signature = _good(app).rpartition(".")
    return f"{payload.replace('good.example', 'evil.example')}.{signature}"


_TOKENS = {
    # forged
    "unsigned JSON": lambda app: _good(app).rpartition(".")[0],
    "tampered payload, original signature": _tampered,
    "signed with another secret": lambda app: Signer("another-secret-entirely", salt=_SIGNING_SALT)
    .sign(json.dumps({"v": 1, "e": {"HTTP_HOST": "evil.example"}})).decode(),
    "signed with our secret but another salt": lambda app: Signer(app.secret_key, salt="another-salt")
    .sign(json.dumps({"v": 1, "e": {"HTTP_HOST": "evil.example"}})).decode(),
    "garbage": lambda app: "not json at all.signature",
    "empty string": lambda app: "",
    "a number": lambda app: 12345,
    "a list": lambda app: ["a", "list"],
    "an object": lambda app: {"v": 1, "e": {}},
    # truncated
    "truncated to half": lambda app: (lambda good: good[: len(good) // 2])(_good(app)),
    "last character cut": lambda app: _good(app)[:-1],
    "signature cut, separator kept": lambda app: _good(app).rpartition(".")[0] + ".",
    # signed, but malformed
    "signed, not JSON": lambda app: _signed(app, b"{not json"),
    "signed, a JSON array": lambda app: _signed(app, [1, 2]),
    "signed, unknown version": lambda app: _signed(app, {"v": 99, "e": {}}),
    "signed, no version": lambda app: _signed(app, {"e": {}}),
    "signed, environ not an object": lambda app: _signed(app, {"v": 1, "e": ["HTTP_HOST", "x"]}),
    "signed, environ value not a string": lambda app: _signed(app, {"v": 1, "e": {"HTTP_HOST": 5}}),
    "signed, form not pairs": lambda app: _signed(app, {"v": 1, "e": {}, "f": [["a", "b", "c"]]}),
    "signed, body not a string": lambda app: _signed(app, {"v": 1, "e": {}, "b": 5}),
    "signed, binary body not base64": lambda app: _signed(app, {"v": 1, "e": {}, "b64": "not base64!"}),
    "signed, user id not a string": lambda app: _signed(app, {"v": 1, "e": {}, "u": {"id": 1}}),
    # oversized
    "2 MB string": lambda app: "x" * TWO_MB,
    "2 MB, validly signed": lambda app: _signed_of_length(app, TWO_MB),
    "one character above the limit, validly signed": lambda app: _signed_of_length(app, _limit(app) + 1),
}

MISMATCH = "request context signature does not match: tampered, truncated or signed with another secret"
BAD_CONTEXTS = [
    Bad("unsigned JSON", "request context is unsigned"),
    Bad("tampered payload, original signature", MISMATCH),
    Bad("signed with another secret", MISMATCH),
    Bad("signed with our secret but another salt", MISMATCH),
    Bad("garbage", MISMATCH),
    Bad("empty string", "request context header must be a signed string, found str"),
    Bad("a number", "request context header must be a signed string, found int"),
    Bad("a list", "request context header must be a signed string, found list"),
    Bad("an object", "request context header must be a signed string, found dict"),
    Bad("truncated to half", MISMATCH),
    Bad("last character cut", MISMATCH),
    Bad("signature cut, separator kept", MISMATCH),
    Bad("signed, not JSON", "request context is signed but its payload is not valid JSON"),
    Bad("signed, a JSON array", "request context must be an object, found list"),
    Bad("signed, unknown version", "request context format version 99 is not supported (expected 1)"),
    Bad("signed, no version", "request context format version None is not supported (expected 1)"),
    Bad("signed, environ not an object", "request context environ must map strings to strings"),
    Bad("signed, environ value not a string", "request context environ must map strings to strings"),
    Bad("signed, form not pairs", "request context form must be a list of [name, value] string pairs"),
    Bad("signed, body not a string", "request context body must be a string"),
    Bad("signed, binary body not base64", "request context binary body must be base64"),
    Bad("signed, user id not a string", "request context user id must be a string"),
    Bad("2 MB string", f"request context is {TWO_MB} characters, above the limit of 65792"),
    Bad("2 MB, validly signed", f"request context is {TWO_MB} characters, above the limit of 65792"),
    Bad("one character above the limit, validly signed",
        "request context is 65793 characters, above the limit of 65792"),
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


def refusal_logged(live_stack, result: AsyncResult, reason: str) -> bool:
    return f"Refusing to run task {describe_request.name}[{result.id}]: {reason}" in live_stack.worker.log()


def test_the_test_tokens_are_what_they_claim(live_app):
    """The oversized ones are over the limit by construction, the signed ones verify as signatures."""
    limit = _limit(live_app)
    assert limit == 65792  # the live stack runs with the default CELERY_CONTEXT_MAX_BYTES
    tokens = {bad.problem: bad.token(live_app) for bad in BAD_CONTEXTS}
    assert len(tokens["2 MB string"]) == len(tokens["2 MB, validly signed"]) == TWO_MB
    assert len(tokens["one character above the limit, validly signed"]) == limit + 1
    for problem, token in tokens.items():
        if problem.startswith("signed,") or "validly signed" in problem:
            _ours(live_app).unsign(token.encode())  # raises if the signature were bad


@pytest.mark.parametrize("bad", BAD_CONTEXTS, ids=lambda bad: bad.problem)
def test_the_worker_refuses_a_bad_context_naming_the_problem(live_app, live_stack, bad):
    result = publish_by_hand(bad.token(live_app))
    with pytest.raises(ContextRefused) as refused:
        result.get(timeout=TIMEOUT)
    assert str(refused.value) == bad.reason
    assert result.state == "FAILURE"
    assert refusal_logged(live_stack, result, bad.reason), live_stack.worker.log()[-3000:]


def test_a_valid_context_at_the_limit_is_accepted(live_app):
    """The boundary of the size check: one character less than refused above runs."""
    token = _signed_of_length(live_app, _limit(live_app))
    seen = publish_by_hand(token).get(timeout=TIMEOUT)["request"]
    assert seen["host"] == "good.example" and seen["path"] == "/"


def test_the_same_worker_survives_every_bad_context_then_replays_a_real_request(probe_app, live_stack):
    before = worker_identity(live_stack)
    results = [(bad, publish_by_hand(bad.token(probe_app))) for bad in BAD_CONTEXTS]
    for bad, result in results:
        with pytest.raises(ContextRefused, match="^request context"):
            result.get(timeout=TIMEOUT)
        assert refusal_logged(live_stack, result, bad.reason), bad.problem
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
    with caplog.at_level("WARNING", logger="app.celery_context"):
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
    with caplog.at_level("WARNING", logger="app.celery_context"):
        live, result = _send_from_request(client, "/probe/" + "p" * (70 * 1024))
    assert live["path"].startswith("/probe/ppp")
    assert result.get(timeout=TIMEOUT)["request"] is None  # ran in an app context, not refused
    (warning,) = [r.getMessage() for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
    assert "sending the task without it" in warning
