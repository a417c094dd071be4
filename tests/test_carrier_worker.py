"""CeleryWithContext through a real worker on a real Redis: every field, every send path.

Each test sends tasks from inside a real request (the test client drives the whole WSGI
stack into a probe view) and compares what the worker saw with what the view saw.
"""
from __future__ import annotations

import json

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult
from flask import jsonify
from werkzeug.datastructures import MultiDict
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from app.celery_context import CONTEXT_HEADER
from app.extensions import celery, csrf
from tests.support import probe_tasks
from tests.support.probe_tasks import describe_current_request, describe_request
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
        return jsonify(task_id=result.id, live=describe_current_request())

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
    expected = dict(live)
    expected["headers"] = [pair for pair in live["headers"] if pair[0].lower() not in drop]
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


def test_credentials_never_reach_redis(probe_app, redis_service):
    client = probe_app.test_client()
    probe_view_behaviour["send"] = lambda: describe_request.apply_async(queue="nobody-consumes-this")
    secrets = ["cookie-secret-1", "bearer-secret-2", "csrf-secret-3", "apikey-secret-4",
               "password-secret-5", "form-token-secret-6", "json-token-secret-7", "query-token-secret-8"]
    client.set_cookie("session", secrets[0], domain="localhost")
    response = client.post(
        f"/probe/scan?visible=marker-query&access_token={secrets[7]}",
        headers={"Authorization": f"Bearer {secrets[1]}", "X-CSRFToken": secrets[2], "X-API-Key": secrets[3],
                 "X-Visible": "marker-header"},
        data={"password": secrets[4], "reset_token": secrets[5], "note": "marker-form"},
    )
    assert response.status_code == 200
    queued = redis_service.client()
    try:
        dump = b"".join(
            b"".join(queued.lrange(key, 0, -1)) for key in queued.keys("*") if queued.type(key) == b"list"
        ).decode("utf-8", "replace")
        assert CONTEXT_HEADER in dump and "marker-header" in dump and "marker-form" in dump
        assert "marker-query" in dump
        for secret in secrets:
            assert secret not in dump
    finally:
        queued.delete("nobody-consumes-this")

    probe_view_behaviour["send"] = lambda: describe_request.apply_async(queue="nobody-consumes-this")
    client.post("/probe/json-scan", json={"token": secrets[6], "visible": "marker-json"})
    try:
        dump = b"".join(queued.lrange("nobody-consumes-this", 0, -1)).decode("utf-8", "replace")
        assert "marker-json" in dump and secrets[6] not in dump
    finally:
        queued.delete("nobody-consumes-this")


def _forged_tokens(app) -> dict[str, object]:
    from itsdangerous import Signer

    from app.celery_context import _SIGNING_SALT, _AppState, sign_request_context

    with app.test_request_context("/probe/forged", base_url="https://good.example/"):
        good = sign_request_context(app)
    payload, _, signature = good.rpartition(".")
    evil = payload.replace("good.example", "evil.example")
    other_secret = Signer("another-secret-entirely", salt=_SIGNING_SALT)
    ours = _AppState.for_app(app).signer

    def signed(signer, document) -> str:
        return signer.sign(json.dumps(document)).decode()

    return {
        "unsigned": payload,
        "tampered": f"{evil}.{signature}",
        "another secret": signed(other_secret, {"v": 1, "e": {"HTTP_HOST": "evil.example"}}),
        "truncated": good[: len(good) // 2],
        "not a string": 12345,
        "garbage": "not json at all.signature",
        "signed, not JSON": ours.sign(b"{not json").decode(),
        "signed but malformed": signed(ours, {"v": 1, "e": {"HTTP_HOST": 5}}),
        "signed, unknown version": signed(ours, {"v": 99, "e": {}}),
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
            refusals[result.id] = str(refused.value)
        assert describe_request.delay().get(timeout=TIMEOUT)["request"] is None
    log = live_stack.worker.log()
    for task_id, reason in refusals.items():  # each refusal logged, under its own task id
        assert f"Refusing to run task {describe_request.name}[{task_id}]: {reason}" in log
    reasons = " ".join(refusals.values())
    assert "request context is unsigned" in reasons
    assert "signature does not match: tampered, truncated or signed with another secret" in reasons
    assert "environ must map strings to strings" in reasons and "format version 99" in reasons
    assert "payload is not valid JSON" in reasons


def test_oversized_context_drops_the_form_and_still_runs(probe_app, caplog):
    client = probe_app.test_client()
    big = "x" * (70 * 1024)
    with caplog.at_level("WARNING", logger="app.celery_context"):
        live, result = _send_from_request(client, "/probe/big?keep=1", method="POST",
                                          data={"big": big, "small": "s"}, headers={"X-Keep": "yes"})
    seen = result.get(timeout=TIMEOUT)["request"]
    assert seen["form"] == [] and live["form"][0] == ["big", big]
    assert seen["query_string"] == "keep=1" and ["X-Keep", "yes"] in seen["headers"]
    warnings = [r for r in caplog.records if "CELERY_CONTEXT_MAX_BYTES" in r.getMessage()]
    assert len(warnings) == 1 and "dropped the body and form" in warnings[0].getMessage()
