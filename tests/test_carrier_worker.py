"""The microblog's request carrier through a real worker on a real Redis: every field,
every send path, and nothing of the request readable in Redis.

Each test sends tasks from inside a real request (the test client drives the whole WSGI
stack into a probe view) and compares what the worker saw with what the view saw.
"""
from __future__ import annotations

import base64
import json
import re
import time
from io import BytesIO

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult
from flask import jsonify
from flask_celery_request import CONTEXT_HEADER
from flask_celery_request.task import seal_current_request
from itsdangerous import Signer
from werkzeug.datastructures import MultiDict
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from app.extensions import celery, csrf
from tests.support import probe_tasks
from tests.support.probe_tasks import as_carried, describe_request, describe_sending_request
from tests.support.services import wait_until

TIMEOUT = 30
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
SCRUBBED_HEADERS = {"cookie", "authorization", "proxy-authorization", "x-csrftoken", "x-api-key"}


@pytest.fixture
def probe_app(live_app):
    """The live app plus ``/probe/...``: sends tasks from inside the request, returns ids."""
    sent = {}

    def probe(subpath=""):
        how = probe_view_behaviour.get("send", lambda: describe_request.delay())
        result = how()
        sent["result"] = result
        return jsonify(task_id=result.id, live=describe_sending_request())

    probe_view_behaviour.clear()
    live_app.add_url_rule("/probe/", "probe", csrf.exempt(probe), methods=ALL_METHODS, defaults={"subpath": ""})
    live_app.add_url_rule("/probe/<path:subpath>", "probe", methods=ALL_METHODS)
    live_app.probe_sent = sent
    return live_app


probe_view_behaviour: dict = {}


def _send_from_request(client, path="/probe/", **kwargs):
    response = client.open(path, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    payload = response.get_json()
    return payload["live"], AsyncResult(payload["task_id"])


def _expected(live: dict, drop=SCRUBBED_HEADERS) -> dict:
    expected = as_carried(live, {"password", "csrf_token", "token", "api_key"}.__contains__)
    expected["headers"] = [pair for pair in expected["headers"] if pair[0].lower() not in drop]
    return expected


def test_get_request_fields_replay_byte_exact(probe_app):
    client = probe_app.test_client()
    live, result = _send_from_request(
        client,
        "/probe/caf%C3%A9/a%20b/%E2%9C%93?b=2&a=1&a=&empty&x=%E2%9C%93&plus=a+b",
        base_url="https://blog.example.org:8443/",
        headers=[
            ("Accept-Language", "fr-CH, fr;q=0.9"),
            ("X-Multi", "first"),
            ("X-Multi", "second"),
            ("User-Agent", "Mozilla/5.0 (probe)"),
            ("X-Request-Id", "abc-123"),
        ],
        environ_base={"REMOTE_ADDR": "198.51.100.4"},
    )
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen == _expected(live)
    assert seen["path"] == "/probe/café/a b/✓"
    assert seen["query_string"] == "b=2&a=1&a=&empty&x=%E2%9C%93&plus=a+b"
    assert seen["args"][:3] == [["b", "2"], ["a", "1"], ["a", ""]]
    assert ["X-Multi", "first, second"] in seen["headers"]
    assert seen["index_url"] == "https://blog.example.org:8443/"
    assert seen["remote_addr"] == "198.51.100.4"
    assert seen["endpoint"] == "probe"


def test_form_fields_multi_valued_in_order_and_secrets_dropped(probe_app):
    client = probe_app.test_client()
    form = MultiDict([
        ("tag", "zeta"), ("tag", "alpha"), ("title", "Héllo ✓"), ("empty", ""),
        ("password", "hunter2"), ("csrf_token", "tok"), ("tag", "mid"),
    ])
    live, result = _send_from_request(client, "/probe/form", method="POST", data=form)
    seen = result.get(timeout=TIMEOUT)["request"]
    # Werkzeug's form MultiDict keeps each name's values in order (grouped by name).
    assert seen["form"] == [["tag", "zeta"], ["tag", "alpha"], ["tag", "mid"], ["title", "Héllo ✓"], ["empty", ""]]
    assert seen["method"] == "POST"
    live_without_secrets = [pair for pair in live["form"] if pair[0] not in ("password", "csrf_token")]
    assert seen == {**_expected(live), "form": live_without_secrets}


def test_multipart_form_carries_fields_not_files(probe_app):
    from io import BytesIO

    client = probe_app.test_client()
    data = {"caption": ["one", "two"], "upload": (BytesIO(b"file bytes"), "a.txt")}
    live, result = _send_from_request(client, "/probe/upload", method="POST", data=data,
                                      content_type="multipart/form-data")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["form"] == [["caption", "one"], ["caption", "two"]] == live["form"]
    assert seen["headers"] == _expected(live)["headers"]  # the multipart Content-Type included


def test_json_body_replayed_with_secret_fields_removed(probe_app):
    client = probe_app.test_client()
    document = {"title": "Export ✓", "items": [{"id": 1, "api_key": "k"}], "nested": {"token": "t", "keep": True}}
    live, result = _send_from_request(client, "/probe/json", method="PUT", json=document)
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["json"] == {"title": "Export ✓", "items": [{"id": 1}], "nested": {"keep": True}}
    assert live["json"] == document


def test_json_body_without_secrets_is_byte_exact(probe_app):
    client = probe_app.test_client()
    raw = '{ "b": 1,\n  "a": [1, 2, "\\u00e9"] }'
    live, result = _send_from_request(client, "/probe/raw-json", method="POST", data=raw,
                                      content_type="application/json")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["body"] == live["body"] == raw
    assert seen == _expected(live)


def test_binary_body_replayed_byte_exact(probe_app):
    client = probe_app.test_client()
    body = bytes(range(256)) * 4
    live, result = _send_from_request(client, "/probe/bin", method="POST", data=body,
                                      content_type="application/octet-stream")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["body"].encode("latin-1") == body
    assert seen == _expected(live)


def test_script_root_of_an_app_mounted_under_a_prefix(probe_app):
    probe_app.wsgi_app = DispatcherMiddleware(Response("outside", status=404), {"/prefix": probe_app.wsgi_app})
    client = probe_app.test_client()
    live, result = _send_from_request(client, "/prefix/probe/x?q=1", base_url="http://example.test/")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["script_root"] == "/prefix"
    assert seen["index_url"] == "http://example.test/prefix/"
    assert seen == _expected(live)


def test_request_through_proxyfix_replays_with_forwarded_scheme_host_and_client(probe_app):
    probe_app.wsgi_app = ProxyFix(probe_app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)
    client = probe_app.test_client()
    live, result = _send_from_request(client, "/probe/fwd", base_url="http://10.0.0.5:8000/", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "blog.example.org",
        "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Prefix": "/blog",
    })
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["index_url"] == "https://blog.example.org/blog/"
    assert seen["remote_addr"] == "203.0.113.7"
    assert seen == _expected(live)


def test_current_user_is_restored_without_the_session_cookie(probe_app, live_auth):
    live_auth.signup("ann")
    live, result = _send_from_request(live_auth.client, "/probe/me")
    seen = result.get(timeout=TIMEOUT)["request"]
    assert live["user_id"] is not None and seen["user_id"] == live["user_id"]
    assert not any(name.lower() == "cookie" for name, _ in seen["headers"])
    assert any(name.lower() == "cookie" for name, _ in live["headers"])


def test_context_travels_in_headers_never_in_args_or_kwargs(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: describe_request.apply_async(
        args=("given",), headers={"custom": "mine"}, countdown=0
    )
    _, result = _send_from_request(client, "/probe/args")
    seen = result.get(timeout=TIMEOUT)
    assert seen["task_args"] == ["given"] and seen["task_kwargs"] == {}
    assert seen["previous"] == ["given"]
    assert seen["request"]["path"] == "/probe/args"


def test_every_link_of_a_chain_sees_the_request(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: chain(describe_request.s(), describe_request.s(), describe_request.s()).delay()
    live, result = _send_from_request(client, "/probe/chain?step=1", base_url="https://chain.example/")
    last = result.get(timeout=TIMEOUT)
    second = last["previous"][0]
    first = second["previous"][0]
    for seen in (first, second, last):
        assert seen["request"] == _expected(live)


def test_group_and_chord_members_see_the_request(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: chord((describe_request.s() for _ in range(3)), probe_tasks.collect.s()).delay()
    live, result = _send_from_request(client, "/probe/chord", base_url="https://chord.example/")
    outcome = result.get(timeout=TIMEOUT)
    assert outcome["body"] == _expected(live)
    assert [member["request"] for member in outcome["header"]] == [_expected(live)] * 3

    probe_view_behaviour["send"] = lambda: group(describe_request.s() for _ in range(3)).delay()
    response = client.get("/probe/group", base_url="https://group.example/")
    group_id = response.get_json()["task_id"]
    results = probe_app.probe_sent["result"]
    assert results.id == group_id
    seen = [item["request"] for item in results.get(timeout=TIMEOUT)]
    assert all(item["index_url"] == "https://group.example/" for item in seen)


def test_tasks_sent_from_inside_a_task_inherit_the_context(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: probe_tasks.send_nested.delay()
    live, result = _send_from_request(client, "/probe/nested", base_url="https://nested.example/")
    nested_id = result.get(timeout=TIMEOUT)
    assert AsyncResult(nested_id).get(timeout=TIMEOUT)["request"] == _expected(live)

    probe_view_behaviour["send"] = lambda: probe_tasks.launch_chord_from_task.delay(2)
    live, result = _send_from_request(client, "/probe/nested-chord", base_url="https://deep.example/")
    chord_id = result.get(timeout=TIMEOUT)
    outcome = AsyncResult(chord_id).get(timeout=TIMEOUT)
    assert outcome["body"]["index_url"] == "https://deep.example/"
    assert all(member["request"]["index_url"] == "https://deep.example/" for member in outcome["header"])


def test_retry_keeps_the_context_and_merges_headers(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: probe_tasks.retry_once.delay()
    live, result = _send_from_request(client, "/probe/retry", base_url="https://retry.example/")
    outcome = result.get(timeout=TIMEOUT)
    assert outcome["retries"] == 1
    assert outcome["request"] == _expected(live)


@pytest.mark.parametrize("value", [42, True, False, None, 0, "", "text", [1, "two"], {"a": [1]}, 3.5])
def test_any_json_return_value_succeeds_and_after_request_hooks_run(probe_app, live_stack, value):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: probe_tasks.returns.delay(value)
    _, result = _send_from_request(client, "/probe/returns")
    assert result.get(timeout=TIMEOUT) == value

    def hook_ran():
        return [e for e in live_stack.hook_entries()
                if e["hook"] == "after_request" and e["task"] == probe_tasks.returns.name]

    entries = wait_until(hook_ran, 10, message="the after_request hook entry")
    assert entries[-1]["path"] == "/probe/returns" and entries[-1]["status"] == 200


def test_failing_task_runs_teardown_with_the_error_and_releases_the_session(probe_app, live_stack):
    from app.extensions import db
    from app.models import User

    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: probe_tasks.fails_holding_a_write.delay("ghost")
    _, result = _send_from_request(client, "/probe/fails")
    with pytest.raises(RuntimeError, match="failed after a flush"):
        result.get(timeout=TIMEOUT)
    entries = wait_until(
        lambda: [e for e in live_stack.hook_entries() if e["hook"] == "teardown_request" and e["path"] == "/probe/fails"],
        10, message="the teardown entry",
    )
    assert entries[-1]["error"] == "RuntimeError: failed after a flush"
    with probe_app.app_context():
        # The failed task's transaction was rolled back and its lock released.
        assert db.session.scalar(db.select(User).where(User.username == "ghost")) is None
        db.session.add(User(username="after", email="after@example.com"))
        db.session.commit()
    assert probe_tasks.returns.delay("still serving").get(timeout=TIMEOUT) == "still serving"


def test_without_a_request_tasks_run_in_an_app_context(live_app):
    with live_app.app_context():
        outcome = describe_request.delay().get(timeout=TIMEOUT)
        assert outcome["request"] is None
        failed = probe_tasks.render_link.delay()
        with pytest.raises(Exception, match="SERVER_NAME"):
            failed.get(timeout=TIMEOUT)


def test_templates_render_absolute_links_on_the_request_host(probe_app):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: probe_tasks.render_link.delay()
    _, result = _send_from_request(client, "/probe/link", base_url="https://blog.example.org/")
    assert result.get(timeout=TIMEOUT) == "Visit https://blog.example.org/user/ann"


# --- confidentiality: nothing of the request is readable outside the two processes ----

#: Distinctive, lower-case, alphanumeric: found whatever the case (header names become
#: HTTP_X_... keys) and never by chance in base64.
VISIBLE = {kind: f"zq{kind}7351" for kind in (
    "host", "path", "qname", "qvalue", "hname", "hvalue", "useragent", "language", "refhost", "refqname",
    "refqvalue", "fwdhost", "fname", "fvalue", "jkey", "jvalue", "jnested", "mpname", "mpvalue",
)}
SECRETS = {kind: f"zq{kind}9264" for kind in (
    "cookie", "bearer", "proxyauth", "csrfheader", "apikey", "iap", "password", "resettoken", "querytoken",
    "reftoken", "jsontoken", "filebytes",
)}
CLIENT_ADDRESS = "198.51.100.77"


def _readable(value: bytes) -> str:
    """``value`` as text, plus whatever a reader could decode from it: the base64 bodies of
    kombu's message envelopes, and the bytes under the base64 of every sealed context."""
    text = value.decode("utf-8", "replace")
    found = [text]
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    found.extend(_envelope_bodies(document))
    for token in re.findall(r"fcr1\.([A-Za-z0-9_-]+)", text):
        found.append(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("latin-1"))
    return "\n".join(found)


def _envelope_bodies(document) -> list[str]:
    """The decoded bodies of the kombu envelopes in ``document`` (a queued message, or the
    [message, exchange, routing key] the unacked hash keeps)."""
    if isinstance(document, list):
        return [body for item in document for body in _envelope_bodies(item)]
    if not isinstance(document, dict):
        return []
    bodies = [body for value in document.values() for body in _envelope_bodies(value)]
    properties = document.get("properties")
    if isinstance(document.get("body"), str) and isinstance(properties, dict) \
            and properties.get("body_encoding") == "base64":
        bodies.append(base64.b64decode(document["body"]).decode("utf-8", "replace"))
    return bodies


def _everything_in_redis(redis_service) -> dict[str, str]:
    """Every key of every database, whatever its type, as readable text, by ``"<db>:<key>"``."""
    dump = {}
    for number in range(redis_service.databases):
        client = redis_service.client(db=number)
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key)]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "hash":
                values = [part for pair in client.hgetall(key).items() for part in pair]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [part for _, fields in client.xrange(key)
                          for pair in fields.items() for part in pair]
            else:
                values = []
            dump[f"{number}:{key.decode()}"] = "\n".join([key.decode(), *map(_readable, values)])
    return dump


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [marker for marker in [*VISIBLE.values(), *SECRETS.values(), CLIENT_ADDRESS] if marker in lowered]


def test_nothing_of_the_request_is_readable_in_redis_or_the_worker_log(probe_app, live_stack, redis_service,
                                                                      tmp_path):
    """Path, query, host, client address, every kind of header, form, multipart and JSON:
    none of it, credentials or not, in any Redis key while the task waits in the queue,
    is held unacknowledged by the worker, or has its result stored, nor in the worker's log;
    yet the worker replays every field the scrubber keeps."""
    release = tmp_path / "release"
    described = []
    parked = "nobody-consumes-this"

    def send():
        out = tmp_path / f"described-{len(described)}.json"
        described.append(out)
        describe_request.apply_async(queue=parked)  # stays in the broker, as sent
        return probe_tasks.describe_to_file_when_released.delay(str(out), str(release))

    probe_view_behaviour["send"] = send
    v, s = VISIBLE, SECRETS
    client = probe_app.test_client()
    client.set_cookie("session", s["cookie"], domain=v["host"] + ".example")
    base_url = f"https://{v['host']}.example/"
    headers = {
        f"X-{v['hname']}": v["hvalue"], "User-Agent": v["useragent"], "Accept-Language": v["language"],
        "Referer": f"https://{v['refhost']}.example/p?{v['refqname']}={v['refqvalue']}&token={s['reftoken']}",
        "X-Forwarded-Host": v["fwdhost"] + ".example",
        "Authorization": f"Bearer {s['bearer']}", "Proxy-Authorization": f"Basic {s['proxyauth']}",
        "X-CSRFToken": s["csrfheader"], "X-API-Key": s["apikey"], "X-Goog-IAP-JWT-Assertion": s["iap"],
    }
    common = {"base_url": base_url, "headers": headers, "environ_base": {"REMOTE_ADDR": CLIENT_ADDRESS}}
    path = f"/probe/{v['path']}/x?{v['qname']}={v['qvalue']}&access_token={s['querytoken']}"
    results, lives = [], []
    for options in (
        {"method": "POST", "data": MultiDict([
            (v["fname"], v["fvalue"]), (v["fname"], "second"),
            ("password", s["password"]), ("reset_token", s["resettoken"]),
        ])},
        {"method": "PUT",
         "json": {v["jkey"]: v["jvalue"], "nested": [{"n": v["jnested"], "token": s["jsontoken"]}]}},
        {"method": "POST", "content_type": "multipart/form-data",
         "data": {v["mpname"]: v["mpvalue"], "upload": (BytesIO(s["filebytes"].encode()), "f.txt")}},
    ):
        live, result = _send_from_request(client, path, **common, **options)
        lives.append(live)
        results.append(result)
    assert all(live["host"] == v["host"] + ".example" for live in lives)

    # The first task is held by the worker, unacknowledged; the others wait in its queue.
    live = redis_service.client(live_stack.redis_db)
    number = live_stack.redis_db

    def held() -> bool:  # its arguments are in the message body: the dump decodes bodies too
        return any(str(described[0]) in _readable(value) for value in live.hvals("unacked"))

    wait_until(held, TIMEOUT, message="the worker to hold the first task unacknowledged")
    while_held = _everything_in_redis(redis_service)
    assert CONTEXT_HEADER in while_held[f"{number}:unacked"] and "fcr1." in while_held[f"{number}:unacked"]
    assert live.llen(parked) == 3 and "fcr1." in while_held[f"{number}:{parked}"]
    try:
        release.touch()
        assert [result.get(timeout=TIMEOUT) for result in results] == ["described"] * 3
        after = _everything_in_redis(redis_service)
        assert any(key.startswith(f"{number}:celery-task-meta-") for key in after)
        for when, dump in (("while held", while_held), ("after the results", after)):
            leaks = {key: _leaks(text) for key, text in dump.items() if _leaks(text)}
            assert leaks == {}, when
        assert _leaks(live_stack.worker.log()) == []
    finally:
        live.delete(parked)

    # The worker did see the request: every field the scrubber keeps, and no credential.
    seen = [json.loads(out.read_text()) for out in described]
    for one in seen:
        assert (one["host"], one["remote_addr"]) == (v["host"] + ".example", CLIENT_ADDRESS)
        assert one["path"] == f"/probe/{v['path']}/x" and one["args"] == [[v["qname"], v["qvalue"]]]
        assert [f"X-{v['hname'].capitalize()}", v["hvalue"]] in one["headers"]
        referer = f"https://{v['refhost']}.example/p?{v['refqname']}={v['refqvalue']}"  # its token dropped
        assert ["Referer", referer] in one["headers"]
        for name in ("User-Agent", "Accept-Language", "X-Forwarded-Host"):
            assert [name, headers[name]] in one["headers"]
        assert not any(secret in json.dumps(one) for secret in SECRETS.values())
    assert seen[0]["form"] == [[v["fname"], v["fvalue"]], [v["fname"], "second"]]
    assert seen[1]["json"] == {v["jkey"]: v["jvalue"], "nested": [{"n": v["jnested"]}]}
    assert seen[2]["form"] == [[v["mpname"], v["mpvalue"]]]


# --- refusals: the complete list is tests/reliability/test_bad_context.py ------------------


def _forged_tokens(app) -> dict[str, object]:
    from flask_celery_request.transport import Sealer

    state = app.extensions["flask_celery_request"]
    with app.test_request_context("/probe/forged", base_url="https://good.example/"):
        good = seal_current_request()
    raw = bytearray(base64.urlsafe_b64decode(good[5:] + "=" * (-len(good[5:]) % 4)))
    raw[-1] ^= 1
    plaintext = json.dumps({"e": {"HTTP_HOST": "evil.example"}}).encode()
    return {
        "tampered": "fcr1." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(),
        "another secret": Sealer(["another-secret-entirely"], state.settings).seal(plaintext),
        "truncated": good[: len(good) // 2],
        "not a string": 12345,
        "unknown format": "not json at all.signature",
        "earlier signed format": Signer([app.secret_key], salt="celery-with-context.v1")
        .sign(json.dumps({"v": 1, "e": {"HTTP_HOST": "evil.example"}})).decode(),
        "expired": state.sealer.seal(plaintext, now=time.time() - 8 * 86400),
        "sealed but malformed": state.sealer.seal(json.dumps({"e": {"HTTP_HOST": 5}}).encode()),
    }


def test_forged_contexts_are_refused_and_the_worker_keeps_serving(live_app, live_stack):
    refusals = {}
    with live_app.app_context():
        tokens = _forged_tokens(live_app)
        for problem, token in tokens.items():
            # Published by hand, as an attacker with broker access would: bypasses our Task class.
            result = celery.send_task(describe_request.name, headers={CONTEXT_HEADER: token})
            with pytest.raises(Exception) as refused:
                result.get(timeout=TIMEOUT)
            assert type(refused.value).__name__ == "ContextRefused", problem
            assert "request context" in str(refused.value), problem
            refusals[problem] = (result.id, str(refused.value))
        assert describe_request.delay().get(timeout=TIMEOUT)["request"] is None
    log = live_stack.worker.log()
    for task_id, reason in refusals.values():  # each refusal logged, under its own task id
        assert f"Refusing to run task {describe_request.name}[{task_id}]: {reason}" in log
    reasons = {problem: reason for problem, (_, reason) in refusals.items()}
    assert "tampered with" in reasons["tampered"]
    assert "sealed with another secret" in reasons["another secret"]
    assert "truncated" in reasons["truncated"]
    assert "found int" in reasons["not a string"]
    assert "unknown format" in reasons["unknown format"]
    assert "signed, unencrypted format of an earlier release" in reasons["earlier signed format"]
    assert "expired" in reasons["expired"]
    assert "environ must map strings to strings" in reasons["sealed but malformed"]


def test_oversized_context_drops_the_form_and_still_runs(probe_app, caplog):
    client = probe_app.test_client()
    big = "x" * (70 * 1024)
    with caplog.at_level("WARNING", logger="flask_celery_request.capture"):
        live, result = _send_from_request(client, "/probe/big?keep=1", method="POST",
                                          data={"big": big, "small": "s"}, headers={"X-Keep": "yes"})
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["form"] == [] and live["form"][0] == ["big", big]
    assert seen["query_string"] == "keep=1" and ["X-Keep", "yes"] in seen["headers"]
    warnings = [r for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
    assert len(warnings) == 1 and "dropped the body" in warnings[0].getMessage()
