"""With OpenTelemetry's or Sentry's Celery integration installed on both sides, the request
still crosses whole, and their own tracing still crosses too: nothing of ours is
duplicated in the message, nothing of theirs is broken.

A worker and a sender run in processes of their own (traced_app.py), each with the
integration set up as its documentation says, on the session's redis-server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from conftest import TESTS_DIR, RedisServer, _die_with_parent, _stop_group, wait_until
from flask_celery_request import CONTEXT_HEADER

pytestmark = pytest.mark.worker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SENTRY_TRACE = f"{TRACE_ID}-00f067aa0ba902b7-1"
REQUEST_ID = "click-traced-1"


@dataclass
class Run:
    """One request sent by the sender process, and what every process recorded."""

    published: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    sender_pid: int
    worker_log: str


def _environ(redis_server: RedisServer, tracing: str, records: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
            "FCR_TEST_TRACING": tracing, "FCR_TEST_TRACING_RECORDS": str(records),
            "FCR_TEST_BROKER_URL": redis_server.url, "FCR_TEST_QUEUE": f"fcr-traced-{tracing}"}


@pytest.fixture(scope="module", params=["opentelemetry", "sentry"])
def traced(request: pytest.FixtureRequest, redis_server: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tracing = request.param
    directory = tmp_path_factory.mktemp(tracing)
    records = directory / "records.jsonl"
    environ = _environ(redis_server, tracing, records)
    hostname = f"fcr-traced-{tracing}-{os.getpid()}@localhost"
    log_path = directory / "worker.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "traced_app.celery", "worker", "-P", "prefork", "-c", "1",
             "-n", hostname, "-Q", environ["FCR_TEST_QUEUE"], "--without-gossip", "--without-mingle",
             "-l", "info"],
            cwd=TESTS_DIR, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    control = Celery(broker=redis_server.url)
    try:
        def answers_ping() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited with {worker.returncode}:\n{log_path.read_text()}")
            return bool(control.control.ping(destination=[hostname], timeout=0.5))

        wait_until(answers_ping, 60, f"the {tracing} worker to answer ping")
        headers = {"X-Request-Id": REQUEST_ID, "traceparent": TRACEPARENT, "sentry-trace": SENTRY_TRACE}
        sender = subprocess.run([sys.executable, "traced_app.py", json.dumps(headers)], cwd=TESTS_DIR, env=environ,
                                capture_output=True, text=True, timeout=90)
        assert sender.returncode == 0, f"sender failed:\n{sender.stdout}\n{sender.stderr}\n{log_path.read_text()}"
        sent = json.loads(sender.stdout.strip().splitlines()[-1])

        def worker_records() -> list[dict[str, Any]]:
            entries = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
            # Two tasks, and the retry of one: three runs recorded by the worker.
            return entries if sum(entry["pid"] != sender_pid(entries) for entry in entries) >= 3 else []

        def sender_pid(entries: list[dict[str, Any]]) -> int | None:
            names = [entry for entry in entries if "/start" in entry["name"] or "start" == entry["name"]]
            return names[0]["pid"] if names else None

        entries = wait_until(worker_records, 30, f"the {tracing} worker's records")
        yield Run(sent["published"], sent["results"], entries, sender_pid(entries), log_path.read_text())
    finally:
        _stop_group(worker)
        control.close()


def test_the_request_crosses_as_without_the_integration(traced: Run) -> None:
    expected = {"path": "/start", "request_id": REQUEST_ID, "traceparent": TRACEPARENT}
    assert traced.results["observe"] == expected
    assert traced.results["retried"] == {**expected, "retries": 1}


def test_our_header_travels_once_and_sealed(traced: Run) -> None:
    assert len(traced.published) == 2
    for headers in traced.published:
        flat = json.dumps(headers)
        assert headers[CONTEXT_HEADER].startswith("fcr1.")
        assert flat.count("fcr1.") == 1, headers
        assert REQUEST_ID not in flat and "/start" not in flat


def test_the_integrations_own_headers_are_untouched(traced: Run) -> None:
    """Theirs is there, as they wrote it: the traceparent of their publish span (OpenTelemetry),
    sentry-trace (Sentry); we add no plain trace header of our own."""
    for headers in traced.published:
        if "sentry-trace" in headers:
            assert headers["sentry-trace"].startswith(TRACE_ID + "-")
        else:
            assert headers["traceparent"].startswith(f"00-{TRACE_ID}-") and headers["traceparent"] != TRACEPARENT


def test_the_workers_spans_join_the_requests_trace(traced: Run) -> None:
    """The tasks run in the trace the request started: their spans (transactions) carry its
    trace id, each child of a span of the sender's."""
    sender = [entry for entry in traced.records if entry["pid"] == traced.sender_pid]
    worker = [entry for entry in traced.records if entry["pid"] != traced.sender_pid]
    assert sender and worker
    assert {entry["trace_id"] for entry in traced.records} == {TRACE_ID}
    sender_spans = {entry["span_id"] for entry in sender}
    first_runs = [entry for entry in worker if entry["parent_id"] in sender_spans]
    assert len(first_runs) >= 2, traced.records
