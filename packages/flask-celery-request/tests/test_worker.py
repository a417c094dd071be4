"""A real prefork worker on a real redis-server: the request crosses processes intact,
bad contexts are refused there, and nothing of the request is readable in Redis.

One worker and one redis-server serve the whole session (see conftest.py). The test of
Celery 5.7's ``task_retry_on_worker_lost`` kills the pool process, so it comes last.
"""
from __future__ import annotations

import base64
import gc
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import celery as celery_package
import pytest
from celery import chain, chord, group
from flask import g, session
from flask_login import login_user

from conftest import WORKER_SECRET, Worker, wait_until
from flask_celery_request import CONTEXT_HEADER, ContextRefused, current_context
from flask_celery_request.settings import ContextSettings
from flask_celery_request.transport import PREFIX, Sealer

pytestmark = pytest.mark.worker

TIMEOUT = 30
CELERY_5_7 = tuple(celery_package.VERSION[:2]) >= (5, 7)

#: A realistic POST: https on a port, under a script root, a raw query with repeats and
#: escapes, browser headers, a multi-valued form, a client address behind a proxy.
POST = {
    "path": "/shop/caf%C3%A9/item",
    "base_url": "https://shop.example.org:8443/store",
    "method": "POST",
    "query_string": "q=a+b&q=%C3%A9t%C3%A9&empty=&flag&sort=-price",
    "data": "tag=b&tag=a&title=Caf%C3%A9+cr%C3%A8me&password=hunter2&qty=2",
    "content_type": "application/x-www-form-urlencoded",
    "headers": [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "fr-FR,fr;q=0.8,en;q=0.5"),
        ("Referer", "https://shop.example.org:8443/store/cart?step=2"),
        ("Origin", "https://shop.example.org:8443"),
        ("X-Forwarded-For", "198.51.100.4, 10.0.0.2"),
        ("X-Request-Id", "9f0c2b"),
        ("Cookie", "session=abc; theme=dark"),
        ("Authorization", "Bearer secret-token"),
    ],
    "environ_base": {"REMOTE_ADDR": "203.0.113.77", "REMOTE_PORT": 50321},
}
NOT_CARRIED_HEADERS = {"Cookie", "Authorization"}


def expected_from(seen: dict[str, Any]) -> dict[str, Any]:
    """What the sender saw, less what is deliberately never carried."""
    return {
        **seen,
        "headers": [pair for pair in seen["headers"] if pair[0] not in NOT_CARRIED_HEADERS],
        "form": [pair for pair in seen["form"] if pair[0] != "password"],
    }


def send(worker: Worker, task: Any, request: dict[str, Any] = POST, **options: Any) -> tuple[dict, Any]:
    """Send ``task`` from inside ``request``: (what the view saw, the AsyncResult)."""
    with worker.module.flask_app.test_request_context(**request):
        seen = worker.module.describe()
        result = task.apply_async(**options)
    return seen, result


@pytest.fixture(autouse=True)
def _collect_earlier_results() -> None:
    """An AsyncResult unsubscribes from Redis when collected; collected by the cyclic GC
    in the middle of a send's own subscribe, it deadlocks on the same connection (seen on
    Celery 5.5). Earlier tests' results are collected here, before this test sends."""
    gc.collect()


def get(result: Any, timeout: float = TIMEOUT) -> Any:
    return result.get(timeout=timeout, disable_sync_subtasks=False)


def test_realistic_post_seen_byte_exact(worker: Worker) -> None:
    seen, result = send(worker, worker.module.snapshot)
    in_task = get(result)
    assert in_task.pop("pid") != os.getpid()  # it did run in the worker
    assert in_task == expected_from(seen)
    assert in_task["url"] == "https://shop.example.org:8443/store/shop/caf\u00e9/item?q=a+b&q=\u00e9t\u00e9&empty=&flag&sort=-price"
    assert in_task["query_string"] == POST["query_string"]
    assert in_task["external_url"] == "https://shop.example.org:8443/store/shop/x"
    assert in_task["form"] == [["tag", "b"], ["tag", "a"], ["title", "Caf\u00e9 cr\u00e8me"], ["qty", "2"]]
    assert (in_task["remote_addr"], in_task["remote_port"]) == ("203.0.113.77", "50321")
    assert [name for name, _ in in_task["headers"]] == [
        "Host", "Content-Type", "Content-Length", "User-Agent", "Accept", "Accept-Language", "Referer",
        "Origin", "X-Forwarded-For", "X-Request-Id"]


def test_json_body_seen_byte_exact(worker: Worker) -> None:
    raw = '{"title": "Caf\u00e9",\n "tags": ["a", "b"], "n": 1.50}'.encode()
    request = {"path": "/api/items", "base_url": "http://api.example.org:8080", "method": "PUT",
               "data": raw, "content_type": "application/json"}
    seen, result = send(worker, worker.module.snapshot, request)
    in_task = get(result)
    in_task.pop("pid")
    assert in_task == seen
    assert base64.b64decode(in_task["data"]) == raw
    assert in_task["json"] == {"title": "Caf\u00e9", "tags": ["a", "b"], "n": 1.5}


def test_binary_body_seen_byte_exact(worker: Worker) -> None:
    raw = bytes(range(256)) * 3
    request = {"path": "/upload", "method": "POST", "data": raw, "content_type": "application/octet-stream"}
    seen, result = send(worker, worker.module.snapshot, request)
    in_task = get(result)
    in_task.pop("pid")
    assert in_task == seen
    assert base64.b64decode(in_task["data"]) == raw


def test_signed_in_user_seen(worker: Worker) -> None:
    module = worker.module
    with module.flask_app.test_request_context("/account", method="POST"):
        login_user(module.User("user-42"))
        result = module.snapshot.delay()
    assert get(result)["user"] == "user-42"


def test_after_request_hooks_run_in_the_worker(worker: Worker) -> None:
    """After the task body: after_this_request, then the app's hook, on an empty 200."""
    key = f"fcr-hooks-{os.getpid()}-{time.monotonic_ns()}"
    _, result = send(worker, worker.module.uses_after_this_request,
                     {"path": "/hooks/one", "headers": {"X-Hook-Key": key}})
    assert get(result) == "/hooks/one"
    client = worker.redis.client()
    recorded = wait_until(lambda: client.llen(key) >= 3 and client.lrange(key, 0, -1), 10, "the hooks to run")
    assert recorded == [b"task", b"after-this-request:/hooks/one", b"app-hook:200:/hooks/one"]


def test_chain_members_see_the_request(worker: Worker) -> None:
    module = worker.module
    with module.flask_app.test_request_context("/chain/start", base_url="https://c.example.org"):
        result = chain(module.path_seen.si(), module.path_seen.s(), module.path_seen.s()).apply_async()
    assert get(result) == "/chain/start"
    assert get(result.parent) == "/chain/start"
    assert get(result.parent.parent) == "/chain/start"


def test_link_callback_sees_the_request(worker: Worker) -> None:
    """A link is sent by the worker after the task succeeds, outside its request."""
    module = worker.module
    callback = module.path_seen.s()
    callback.freeze()
    with module.flask_app.test_request_context("/link/start"):
        result = module.path_seen.apply_async(link=callback)
    assert get(result) == "/link/start"
    assert get(module.path_seen.AsyncResult(callback.id)) == "/link/start"


def test_group_members_see_the_request(worker: Worker) -> None:
    module = worker.module
    with module.flask_app.test_request_context("/group/start"):
        result = group(module.path_seen.si() for _ in range(3)).apply_async()
    assert get(result) == ["/group/start"] * 3


def test_chord_header_and_body_see_the_request(worker: Worker) -> None:
    """The body is sent by the worker when the header completes: it too carries the context."""
    module = worker.module
    with module.flask_app.test_request_context("/chord/start"):
        result = chord([module.path_seen.si(), module.path_seen.si()], module.collect.s()).apply_async()
    assert get(result) == {"header": ["/chord/start", "/chord/start"], "path": "/chord/start"}


def test_task_sent_from_a_task_inherits_the_context(worker: Worker) -> None:
    module = worker.module
    seen, result = send(worker, module.send_child)
    child = module.snapshot.AsyncResult(get(result))
    in_child = get(child)
    in_child.pop("pid")
    assert in_child == expected_from(seen)


def test_retry_keeps_the_context(worker: Worker) -> None:
    seen, result = send(worker, worker.module.retry_once)
    in_task = get(result)
    assert in_task.pop("retries") == 1
    assert in_task == expected_from(seen)


def test_carried_values_cross_to_the_worker_and_on_to_its_children(worker: Worker) -> None:
    module = worker.module
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with module.flask_app.test_request_context("/values", headers={"X-Request-Id": "click-77",
                                                                   "traceparent": traceparent}):
        session["lang"], session["tz"] = "ru", "Asia/Shanghai"
        g.tenant = "acme"
        direct, parent = module.carried.delay(), module.carried_child.delay()
    expected = {"request_id": "click-77", "locale": "ru", "timezone": "Asia/Shanghai", "tenant": "acme",
                "traceparent": traceparent}
    assert get(direct) == expected
    assert get(module.carried.AsyncResult(get(parent))) == expected


def test_the_workers_lines_about_a_task_carry_its_request_id(worker: Worker) -> None:
    """Received (main process), the task's own line, succeeded (pool process)."""
    module = worker.module
    with module.flask_app.test_request_context("/logged", headers={"X-Request-Id": "click-logged"}):
        result = module.logged.delay()
    assert get(result) == "logged"

    def lines() -> list[str] | None:
        found = [line for line in worker.log().splitlines() if result.id in line]
        return found if any("succeeded" in line for line in found) else None

    received, own, succeeded = wait_until(lines, 10, "the worker's lines about the task")
    assert received.endswith("received") and "a line of the task's own" in own and "succeeded" in succeeded
    for line in (received, own, succeeded):
        assert "[click-logged]" in line, line


def test_lines_outside_any_task_have_no_request_id(worker: Worker) -> None:
    ready = [line for line in worker.log().splitlines() if " ready." in line]
    assert ready and all("[-]" in line for line in ready)


# --- refusals -------------------------------------------------------------------------------


def worker_sealer(secret: str = WORKER_SECRET) -> Sealer:
    return Sealer([secret], ContextSettings.from_config({}))


def good_token(worker: Worker, path: str = "/refusal") -> str:
    with worker.module.flask_app.test_request_context(path):
        return current_context()


def flip(token: str, index: int) -> str:
    """The token with one base64 character changed (in the ciphertext, past the header)."""
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1:]


def bad_tokens(worker: Worker) -> Iterator[tuple[str, str, str]]:
    token = good_token(worker)
    sealer = worker_sealer()
    raw = os.urandom(80)
    forged = PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    key_id = base64.urlsafe_b64decode(token[len(PREFIX):len(PREFIX) + 8])[:4]
    length = len(base64.urlsafe_b64decode(token[len(PREFIX):] + "=" * (-len(token[len(PREFIX):]) % 4))) - 20
    forged_with_key_id = PREFIX + base64.urlsafe_b64encode(
        key_id + length.to_bytes(4, "big") + os.urandom(12 + length)).rstrip(b"=").decode()
    yield "forged", forged, "was sealed with another secret"
    yield "forged-with-key-id", forged_with_key_id, "was tampered with"
    yield "tampered", flip(token, len(token) // 2), "was tampered with"
    yield "truncated", token[:len(PREFIX) + (len(token) - len(PREFIX)) // 8 * 4], "is truncated"
    yield "expired", sealer.seal(b'{"e":{"PATH_INFO":"/old"}}', now=time.time() - 8 * 24 * 3600), "has expired"
    yield "other-secret", worker_sealer("another-secret").seal(b'{"e":{}}'), "was sealed with another secret"
    yield "old-format", '{"e":{"PATH_INFO":"/"}}.c2lnbmF0dXJl', "signed, unencrypted format of an earlier release"
    yield "not-base64", PREFIX + "AAAA*AAAA", "not base64"
    yield "wrong-shape", sealer.seal(b'{"e":{"PATH_INFO":7}}'), "environ must map strings to strings"


def test_bad_contexts_refused_with_their_reason_and_the_worker_goes_on(worker: Worker) -> None:
    module = worker.module
    sent = [(name, reason, module.path_seen.apply_async(headers={CONTEXT_HEADER: token}))
            for name, token, reason in bad_tokens(worker)]
    for name, reason, result in sent:
        with pytest.raises(ContextRefused, match=re.escape(reason)) as caught:
            get(result)
        # The result backend caches the exception: let its traceback not keep this frame alive.
        caught.value.with_traceback(None)
        assert result.state == "FAILURE", name
    # The same worker then runs a good task, in its request.
    good = module.path_seen.apply_async(headers={CONTEXT_HEADER: good_token(worker, "/after-refusals")})
    assert get(good) == "/after-refusals"
    wait_until(lambda: worker.log().count("Refusing to run task") >= len(sent), 10, "refusals in the worker log")
    assert "has expired" in worker.log() and "earlier release" in worker.log()


# --- confidentiality ------------------------------------------------------------------------

#: Distinctive strings in every part of a request; none may appear anywhere in Redis.
MARKERS = {
    "path": "PathMarkerQx7Lm", "query": "QueryMarkerZk4Wp", "header": "HeaderMarkerVb9Tn",
    "url_header": "RefererMarkerYd3", "form": "FormMarkerJw2Rs", "json": "JsonMarkerHt5Gq",
    "user": "UserMarkerRp3Ka", "cookie": "CookieMarkerMm8", "auth": "AuthMarkerNq6",
}
PARKED_QUEUE = "fcr-parked"  # no worker consumes it: messages stay in the broker


def marked_requests() -> list[dict[str, Any]]:
    common = {
        "path": f"/shop/{MARKERS['path']}",
        "base_url": "https://secret.example.org",
        "query_string": f"q={MARKERS['query']}",
        "headers": {"X-Note": MARKERS["header"], "Referer": f"https://x.example/{MARKERS['url_header']}?a=1",
                    "Cookie": f"c={MARKERS['cookie']}", "Authorization": f"Bearer {MARKERS['auth']}"},
        "method": "POST",
    }
    return [
        {**common, "data": {"field": MARKERS["form"], "other": ["a", MARKERS["form"]]}},
        {**common, "json": {"note": MARKERS["json"], "deep": [{"x": MARKERS["json"]}]}},
    ]


def send_marked(worker: Worker, task: Any, request: dict[str, Any], *args: Any, **options: Any) -> tuple[str, Any]:
    """Send from the marked request, signed in as the marked user: (expected digest, result)."""
    module = worker.module
    with module.flask_app.test_request_context(**request):
        login_user(module.User(f"user-{MARKERS['user']}"))
        seen = module.describe()
        result = task.apply_async(args, **options)
    assert MARKERS["path"] in seen["path"] and seen["user"] == f"user-{MARKERS['user']}"
    seen["headers"] = [pair for pair in seen["headers"] if pair[0] not in NOT_CARRIED_HEADERS]
    return module.digest(seen), result


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def readable_forms(blob: bytes, depth: int = 3) -> Iterator[bytes]:
    """The blob and whatever base64 inside it decodes to (kombu base64-encodes bodies)."""
    yield blob
    if depth == 0:
        return
    for run in _BASE64_RUN.findall(blob):
        text = run.rstrip(b"=").replace(b"+", b"-").replace(b"/", b"_")
        try:
            decoded = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        except ValueError:
            continue
        yield from readable_forms(decoded, depth - 1)


def redis_dump(worker: Worker) -> dict[str, list[bytes]]:
    """Every key and every value in every database of the redis-server, by key."""
    import redis

    dump: dict[str, list[bytes]] = {}
    databases = [int(name[2:]) for name in worker.redis.client().info("keyspace")]
    for db in databases:
        client = redis.Redis(unix_socket_path=str(worker.redis.socket_path), db=db)
        for key in client.scan_iter(count=500):
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key)]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = [item for pair in client.hgetall(key).items() for item in pair]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"stream":
                values = [item for _, fields in client.xrange(key) for pair in fields.items() for item in pair]
            elif kind == b"none":  # expired or consumed between SCAN and TYPE
                continue
            else:
                raise AssertionError(f"unexpected Redis type {kind!r} of {key!r}")
            dump[f"{db}:{key.decode(errors='replace')}"] = [key, *(value for value in values if value is not None)]
    return dump


def assert_no_marker(dump: dict[str, list[bytes]]) -> None:
    for name, blobs in dump.items():
        for blob in blobs:
            for readable in readable_forms(blob):
                lowered = readable.lower()
                for part, marker in MARKERS.items():
                    assert marker.lower().encode() not in lowered, f"the {part} marker is readable in {name}"


def test_nothing_of_the_request_is_readable_in_redis(worker: Worker) -> None:
    module = worker.module
    client = worker.redis.client()
    client.delete(PARKED_QUEUE)
    done = []
    for request in marked_requests():
        done.append(send_marked(worker, module.snapshot_digest, request))
        send_marked(worker, module.snapshot_digest, request, queue=PARKED_QUEUE)
    for expected, result in done:
        assert get(result) == expected  # the worker did see every marker...

    release = f"fcr-release-{os.getpid()}-{time.monotonic_ns()}"
    expected_held, held = send_marked(worker, module.held, marked_requests()[0], release)
    try:
        wait_until(lambda: client.exists(f"{release}:started"), TIMEOUT, "the held task to start")
        dump = redis_dump(worker)
        # ...the scan covers queued, unacknowledged and finished messages...
        assert client.llen(PARKED_QUEUE) == 2
        assert all(CONTEXT_HEADER.encode() in message for message in client.lrange(PARKED_QUEUE, 0, -1))
        assert any(held.id.encode() in value for value in dump.get("0:unacked", [])), sorted(dump)
        assert any(name.startswith("0:celery-task-meta-") for name in dump)
        # ...and none of it is readable there.
        assert_no_marker(dump)
        # The scan would see a marker where one is: in a queued task's arguments, which kombu
        # carries base64-encoded in the message body (and Celery repeats in argsrepr).
        canary = f"CanaryMarker{time.monotonic_ns()}".encode()
        module.path_seen.apply_async((canary.decode(),), queue=PARKED_QUEUE)
        queued = redis_dump(worker)[f"0:{PARKED_QUEUE}"]
        assert any(canary in decoded for blob in queued for decoded in list(readable_forms(blob))[1:])
    finally:
        client.set(release, "1")
    assert get(held) == expected_held
    assert_no_marker(redis_dump(worker))
    log = worker.log().lower()
    for part, marker in MARKERS.items():
        assert marker.lower() not in log, f"the {part} marker is in the worker's log"
    client.delete(PARKED_QUEUE)


# --- Celery 5.7: task_retry_on_worker_lost (kills the pool process: keep it last) -----------

if CELERY_5_7:
    def test_worker_lost_retry_keeps_the_context(worker: Worker) -> None:
        """The pool process dies mid-task; the worker's parent re-sends it, outside any
        request, through signature_from_request: the second attempt runs in the request."""
        seen, result = send(worker, worker.module.killed_once)
        in_task = get(result, timeout=60)
        assert in_task.pop("retries") == 1
        in_task.pop("pid")
        assert in_task == expected_from(seen)
        assert "WorkerLostError" in worker.log() or "exited prematurely" in worker.log()
        assert worker.module.celery.control.ping(destination=[worker.hostname], timeout=2)
