#!/usr/bin/env python
"""What Flask-Celery-Request costs over plain Celery, and over flask-celeryext's way.

    .venv/bin/python bench/context_overhead.py            # the full run (about 3 minutes)
    .venv/bin/python bench/context_overhead.py --quick    # a smoke run (tests/test_bench.py)

Every side runs against the same Redis (an embedded redis-server on a unix socket in a
temp dir, or ``REDIS_URL`` when set) and, for throughput, its own real worker,
``celery -A bench.overhead_apps.<side> worker -c 1 -P prefork``. The sides (see
bench/overhead_apps.py):

ref      plain ``celery.Celery`` configured exactly like the app
         (``celery_settings(flask_app.config)``); only the Task class differs from ours
default  ``Celery()`` with only ``broker_url`` and ``result_backend`` set (same Redis)
ours     the app's ``CeleryWithContext``: the request travels sealed in a header
peer     flask-celeryext's pattern: plain Celery configured like the app, the task run
         in an empty ``test_request_context()`` with preprocess/process_response

Every task is sent from inside a fresh, realistic request: a POST with a query string,
14 browser headers (among them a real Flask session cookie of a real user of the
bench's SQLite database, so Flask-Login's user_loader really queries it) and 4 form
fields. Each call gets a fresh request context: the extension caches the sealed
context per request environ, and reusing one request would measure a cache hit.

enqueue, view read form+user
    the view already parsed the form and loaded the user (``request.form`` and
    ``current_user.is_authenticated`` touched before), as a real view does. Only the
    ``.delay()`` call is timed (perf_counter); the request context is pushed outside
    the timed region. ref and ours interleaved call by call.
enqueue, untouched request
    a fresh request context with the signed-in session cookie, nothing read before
    ``.delay()``: ours must parse the form and find the user itself. default, ref and
    ours interleaved call by call.
    Enqueued messages go to a queue no worker consumes (so no worker competes for the
    CPU while the sender is timed), purged after every round, its length checked.
throughput
    wall time from the first send to the last result of M no-op tasks through the
    real worker (request push, the view's reads, sending, broker, worker, result
    backend), in tasks per second; ref, ours and peer rounds rotate.
send breakdown (info)
    where ours' extra CPU per ``.delay()`` goes, loaded case: ref's ``.delay()``, ref's
    with our header added, ours with the request already sealed, ours; interleaved.
replay
    in-process, no broker: ours is ``sealer.open(token)`` + ``with replay_request(...):
    pass``; peer is ``with app.test_request_context(): preprocess_request();
    process_response(response_class())``; short timeit blocks rotating between them
    (and ours in parts: open, replay, replay without the user), by this thread's CPU
    time, the best block reported.

Figures are medians over rounds, ratios the median of the per-round ratios. Targets
(from the issue) are reported as PASS/MISS; a MISS never fails the run: the exit status
is non-zero only when something actually broke.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import timeit
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import redis_socket_url  # noqa: E402
from devservers.redis_server import start_redis, stop_redis  # noqa: E402
from devservers.workers import CeleryWorker  # noqa: E402

SECRET_KEY = "bench-secret-key-0123456789abcdef-not-for-production"
PACKAGE_SRC = ROOT / "packages" / "flask-celery-request" / "src" / "flask_celery_request"

# The realistic request every task is sent from.
REQUEST_PATH = "/export"
REQUEST_QUERY = "page=2&sort=new&tag=a&tag=b"
BASE_URL = "https://blog.example.org/"
REMOTE_ADDR = "203.0.113.7"
FORM = {
    "title": "Quarterly export: drafts & published posts",
    "format": "json",
    "include_drafts": "y",
    "csrf_token": "IjY0ZjE5YjQ1ZGM2ZTFhYTk4ZmQ3ZjE0ZDE5ZGQ2MjE5NDlhNTcwYjEi.ZxQ1nw.Jq3zv0n3sXf4",
}
BENCH_USER = {"username": "bench", "email": "bench@example.org"}

#: The two enqueue cases: the sides compared in each, the first the target's reference.
LOADED, COLD = "loaded", "cold"
ENQUEUE_SIDES = {LOADED: ("ref", "ours"), COLD: ("default", "ref", "ours")}
THROUGHPUT_SIDES = ("ref", "ours", "peer")
CASE_LABEL = {LOADED: "view read form+user", COLD: "untouched request"}


def realistic_headers(session_cookie: str) -> dict[str, str]:
    return {
        "User-Agent": (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36"
        ),
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        "Accept-Language": "en-GB,en;q=0.9,fr;q=0.7",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Referer": "https://blog.example.org/export?page=1&sort=new",
        "Origin": "https://blog.example.org",
        "Cookie": f"session={session_cookie}; _ga=GA1.2.1234567890.1700000000",
        "DNT": "1",
        "Sec-Fetch-Dest": "document",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-User": "?1",
        "Upgrade-Insecure-Requests": "1",
        "X-Request-Id": str(uuid.uuid4()),
    }


# --- processes -----------------------------------------------------------------------------


def start_worker(side: str, target: str, queue: str, env: dict[str, str], log_path: Path) -> CeleryWorker:
    """A real ``celery -A <target> worker -c 1 -P prefork`` consuming only ``queue``, in its
    own process group; SIGTERMed if the benchmark dies (the finally block is the real cleanup)."""
    return CeleryWorker(
        target, env, log_path, hostname=f"bench-{side}-{os.getpid()}@localhost", concurrency=1,
        pool="prefork", queues=[queue], loglevel="warning", without=("gossip", "mingle", "heartbeat"),
        name=f"the {side} worker", parent_death_signal=signal.SIGTERM,
    ).start()


def _cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of a process, from /proc (Linux); None elsewhere or if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    try:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(child) for child in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _release(results: list) -> None:
    """Drop AsyncResults now, while Redis is up: each unsubscribes from the backend."""
    results.clear()
    gc.collect()


def _drain_result_consumer(celery_app) -> int:
    """Read the subscribe/unsubscribe confirmations piled up on the result backend's
    pubsub connection (outside any timed region); how many were read.

    Every ``.delay()`` subscribes to its result and every released AsyncResult
    unsubscribes; a sender that never waits for a result reads none of Redis's
    confirmations, which wait in Redis's output buffer for that client (Redis drops a
    pubsub client past 8 MB). Left there, the next wait for a result (a throughput
    round's join) would read them one per drain, seconds of it after the enqueue
    rounds, and only on the sides that enqueued. Celery's private ``_pubsub``: a no-op
    if that changes.
    """
    consumer = getattr(celery_app.backend, "result_consumer", None)
    pubsub = getattr(consumer, "_pubsub", None)
    connection = getattr(pubsub, "connection", None)
    read = 0
    while connection is not None and connection.can_read(timeout=0):
        pubsub.get_message(timeout=0)
        read += 1
    return read


def _raise_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _rotations(sides: tuple[str, ...], i: int) -> tuple[str, ...]:
    """The i-th order of ``sides``: each side takes each position equally often."""
    k = i % len(sides)
    return sides[k:] + sides[:k]


# --- measurements --------------------------------------------------------------------------


def _per_side(sides) -> dict[str, list[float]]:
    return {side: [] for side in sides}


@dataclass
class Stats:
    """Per round, in the order run: one value per side and round."""

    enqueue_median: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {case: _per_side(sides) for case, sides in ENQUEUE_SIDES.items()})
    enqueue_mean: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {case: _per_side(sides) for case, sides in ENQUEUE_SIDES.items()})
    enqueue_cpu: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {case: _per_side(sides) for case, sides in ENQUEUE_SIDES.items()})
    throughput: dict[str, list[float]] = field(default_factory=lambda: _per_side(THROUGHPUT_SIDES))
    throughput_cpu: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {side: {} for side in THROUGHPUT_SIDES})
    replay: dict[str, list[float]] = field(default_factory=dict)
    breakdown: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, apps, args: argparse.Namespace) -> None:
        self.apps = apps
        self.flask_app = apps.flask_app
        self.args = args
        self.worker_pids: dict[str, int] = {}  # side -> worker main process
        self.redis_pid: int | None = None
        self.user_id, self.session_id = _create_bench_user(self.flask_app)
        serializer = self.flask_app.session_interface.get_signing_serializer(self.flask_app)
        self.session_cookie = serializer.dumps({"_user_id": self.session_id, "_fresh": True})
        self._environ, self._body = self._template_environ()

    # The realistic request -----------------------------------------------------------

    def _template_environ(self) -> tuple[dict, bytes]:
        """The realistic request's environ, built once by Flask's EnvironBuilder (what
        ``test_request_context`` uses); each request gets a copy with its own body stream
        and X-Request-Id, so building requests costs the sender little outside the timing."""
        from flask.testing import EnvironBuilder

        builder = EnvironBuilder(
            self.flask_app, f"{REQUEST_PATH}?{REQUEST_QUERY}", base_url=BASE_URL, method="POST",
            headers=realistic_headers(self.session_cookie), data=FORM,
            environ_base={"REMOTE_ADDR": REMOTE_ADDR},
        )
        try:
            environ = builder.get_environ()
            body = environ["wsgi.input"].read()
        finally:
            builder.close()
        return environ, body

    def fresh_environ(self) -> dict:
        environ = dict(self._environ)
        environ["wsgi.input"] = BytesIO(self._body)
        environ["HTTP_X_REQUEST_ID"] = str(uuid.uuid4())
        return environ

    def request_context(self, environ: dict | None = None):
        return self.flask_app.request_context(self.fresh_environ() if environ is None else environ)

    def view_work(self, case: str) -> None:
        """What the view did before sending the task: in the loaded case it parsed the
        form (as its WTForm does) and loaded the user (as login_required does, which
        queries the database through the user_loader); in the cold case nothing."""
        if case == COLD:
            return
        from flask import request
        from flask_login import current_user

        request.form  # noqa: B018
        current_user.is_authenticated  # noqa: B018

    def check_cases(self) -> None:
        """Once, outside the timing: the loaded case has the user and the form, the cold
        one neither, and ours seals the request inside the ``.delay()`` call."""
        from flask import g, request
        from flask_celery_request.replay import ENVIRON_TOKEN_KEY
        from flask_login import current_user

        for case in (LOADED, COLD):
            environ = self.fresh_environ()
            with self.request_context(environ):
                self.view_work(case)
                loaded = g.get("_login_user") is not None
                parsed = "form" in request.__dict__
                if (loaded, parsed) != ((True, True) if case == LOADED else (False, False)):
                    raise RuntimeError(f"{case}: user loaded {loaded}, form parsed {parsed}")
                if case == LOADED and current_user.get_id() != self.session_id:
                    raise RuntimeError(f"the session cookie signs in {current_user.get_id()!r}, "
                                       f"not the bench user {self.user_id}")
                if ENVIRON_TOKEN_KEY in environ:
                    raise RuntimeError("a context was sealed before .delay()")
                results = [self.apps.SIDES["ours"]["sink"].delay()]
                if not environ.get(ENVIRON_TOKEN_KEY):
                    raise RuntimeError(f"{case}: ours sent without sealing the request")
            self.purge("ours", self.apps.QUEUES["ours"]["sink"])
            _release(results)
            _drain_result_consumer(self.apps.SIDES["ours"]["celery"])

    # Plumbing -----------------------------------------------------------------------

    def purge(self, side: str, queue: str) -> int:
        celery_app = self.apps.SIDES[side]["celery"]
        with celery_app.connection_for_write() as connection:
            return connection.default_channel.queue_purge(queue) or 0

    def forget(self, side: str, results: list) -> None:
        """Delete the results' keys (outside any timed region) so Redis stays small."""
        backend = self.apps.SIDES[side]["celery"].backend
        keys = [backend.get_key_for_task(r.id) for r in results]
        for start in range(0, len(keys), 500):
            backend.client.delete(*keys[start:start + 500])

    def send_once(self, task, results: list) -> None:
        with self.request_context():
            self.view_work(LOADED)
            results.append(task.delay())

    def probe(self) -> None:
        """Every worker answers; ours really runs inside the replayed request, signed in
        as the sender; peer in an empty request of the app; ref outside any request."""
        timeout = 60
        expected_url = f"{BASE_URL.rstrip('/')}{REQUEST_PATH}?{REQUEST_QUERY}"
        for side in self.apps.WORKER_SIDES:
            results: list = []
            try:
                self.send_once(self.apps.SIDES[side]["probe"], results)
                seen = results[0].get(timeout=timeout)
                self.forget(side, results)
            finally:
                _release(results)
            problems = []
            if side == "ref":
                if seen["has_request"]:
                    problems.append("ran inside a Flask request")
            elif side == "peer":
                if not seen["has_request"] or seen["url"] == expected_url or seen["user"] is not None:
                    problems.append(f"expected an empty test request, found {seen}")
            else:
                form = dict(seen.get("form", ()))
                headers = {name.lower() for name, _ in seen.get("headers", ())}
                if not seen["has_request"]:
                    problems.append("no request context in the worker")
                else:
                    if seen["url"] != expected_url or seen["method"] != "POST":
                        problems.append(f"replayed {seen['method']} {seen['url']}")
                    if form != {k: v for k, v in FORM.items() if k != "csrf_token"}:
                        problems.append(f"replayed form {form}")
                    if "cookie" in headers or "x-request-id" not in headers:
                        problems.append(f"replayed headers {sorted(headers)}")
                    if seen["user"] != self.session_id:
                        problems.append(f"replayed user {seen['user']!r}, not {self.user_id}")
            if problems:
                raise RuntimeError(f"the {side} worker: " + "; ".join(problems))

    def sealed_sizes(self) -> dict[str, int]:
        """Bytes of our header value, sealed in each case's request."""
        from flask_celery_request import current_context

        sizes = {}
        for case in (LOADED, COLD):
            with self.request_context():
                self.view_work(case)
                sizes[case] = len(current_context().encode("ascii"))
        return sizes

    # enqueue ------------------------------------------------------------------------

    def enqueue_round(self, case: str, n: int) -> dict[str, tuple[float, float, float]]:
        """N ``.delay()`` calls per side, interleaved call by call, each in a fresh request.

        Per side: (median, mean) wall-clock microseconds per call, and the median of this
        thread's CPU time per call (what the sender itself spends, waits excluded).
        """
        sides = ENQUEUE_SIDES[case]
        tasks = {side: self.apps.SIDES[side]["sink"] for side in sides}
        queues = {side: self.apps.QUEUES[side]["sink"] for side in sides}
        for side in sides:
            self.purge(side, queues[side])
        times: dict[str, list[float]] = _per_side(sides)
        cpu_times: dict[str, list[float]] = _per_side(sides)
        results: list = []
        view_work = self.view_work
        environs = [self.fresh_environ() for _ in range(n * len(sides))]
        try:
            gc.collect()
            clock, cpu_clock = time.perf_counter, time.thread_time
            for i in range(n):
                for side in _rotations(sides, i):
                    ctx = self.flask_app.request_context(environs.pop())
                    ctx.push()
                    try:
                        view_work(case)
                        task = tasks[side]
                        c0 = cpu_clock()
                        t0 = clock()
                        result = task.delay()
                        t1 = clock()
                        c1 = cpu_clock()
                    finally:
                        ctx.pop()
                    times[side].append(t1 - t0)
                    cpu_times[side].append(c1 - c0)
                    results.append(result)
                    result = ctx = None
            for side in sides:
                queued = self.purge(side, queues[side])
                if queued != n:
                    raise RuntimeError(f"{side}: sent {n} messages to {queues[side]} but found {queued} there")
        finally:
            _release(results)  # AsyncResults unsubscribe from the backend here, outside the timing
            for side in sides:
                _drain_result_consumer(self.apps.SIDES[side]["celery"])
        return {
            side: (statistics.median(values) * 1e6, statistics.fmean(values) * 1e6,
                   statistics.median(cpu_times[side]) * 1e6)
            for side, values in times.items()
        }

    def send_breakdown(self, n: int) -> dict[str, float]:
        """Where ours' extra time per ``.delay()`` goes, in the loaded case: median thread
        CPU microseconds of ref's ``.delay()``, ref's with our header added
        (``apply_async(headers=...)``: carrying it through kombu and Redis), ours with the
        request's token already sealed (the Task override) and ours in full (sealing),
        interleaved call by call, each in a fresh request."""
        from flask_celery_request import CONTEXT_HEADER, current_context
        from flask_celery_request.replay import ENVIRON_TOKEN_KEY

        with self.request_context():
            self.view_work(LOADED)
            token = current_context()
        ref, ours = self.apps.SIDES["ref"]["sink"], self.apps.SIDES["ours"]["sink"]
        variants = {
            "ref": lambda: ref.delay(),
            "ref+header": lambda: ref.apply_async(headers={CONTEXT_HEADER: token}),
            "ours, sealed": lambda: ours.delay(),
            "ours": lambda: ours.delay(),
        }
        names = tuple(variants)
        cpu: dict[str, list[float]] = _per_side(names)
        sent = dict.fromkeys(("ref", "ours"), 0)
        results: list = []
        clock = time.thread_time
        try:
            gc.collect()
            for i in range(n):
                for name in _rotations(names, i):
                    environ = self.fresh_environ()
                    if name == "ours, sealed":
                        environ[ENVIRON_TOKEN_KEY] = token
                    with self.flask_app.request_context(environ):
                        self.view_work(LOADED)
                        send = variants[name]
                        c0 = clock()
                        result = send()
                        c1 = clock()
                    cpu[name].append(c1 - c0)
                    results.append(result)
                    sent[name.partition("+")[0].partition(",")[0]] += 1
                    result = None
            for side, count in sent.items():
                queued = self.purge(side, self.apps.QUEUES[side]["sink"])
                if queued != count:
                    raise RuntimeError(f"{side}: sent {count} messages but found {queued}")
        finally:
            _release(results)
            for side in sent:
                _drain_result_consumer(self.apps.SIDES[side]["celery"])
        return {name: statistics.median(values) * 1e6 for name, values in cpu.items()}

    # throughput ---------------------------------------------------------------------

    def _cpu_snapshot(self, side: str) -> dict[str, float | None]:
        main = self.worker_pids.get(side)
        snapshot: dict[str, float | None] = {"sender": time.process_time()}
        if main is not None:
            snapshot["worker main"] = _cpu_seconds(main)
            children = [_cpu_seconds(child) for child in _children(main)]
            snapshot["worker child"] = sum(c for c in children if c is not None) if children else None
        if self.redis_pid is not None:
            snapshot["redis"] = _cpu_seconds(self.redis_pid)
        return snapshot

    def throughput_round(self, side: str, m: int, cpu: dict[str, list[float]] | None = None) -> float:
        """Tasks per second from the first send to the last result, each task sent from a
        fresh request whose view read the form and the user; with ``cpu``, also append
        each process's CPU microseconds per task (sender, worker main and child, Redis)."""
        from celery.result import ResultSet

        spec = self.apps.SIDES[side]
        task = spec["noop"]
        contexts = [self.request_context() for _ in range(m)]
        results: list = []
        result_set = None
        try:
            gc.collect()
            before = self._cpu_snapshot(side)
            t0 = time.perf_counter()
            for ctx in contexts:
                ctx.push()
                try:
                    self.view_work(LOADED)
                    results.append(task.delay())
                finally:
                    ctx.pop()
            result_set = ResultSet(results, app=spec["celery"])
            timeout = max(120.0, m / 20)
            if result_set.supports_native_join:
                result_set.join_native(timeout=timeout, propagate=True)
            else:
                result_set.join(timeout=timeout, propagate=True)
            elapsed = time.perf_counter() - t0
            after = self._cpu_snapshot(side)
            if cpu is not None:
                for name, start in before.items():
                    end = after.get(name)
                    if start is not None and end is not None and end >= start:
                        cpu.setdefault(name, []).append((end - start) / m * 1e6)
            self.forget(side, results)
        finally:
            result_set = None
            contexts.clear()
            _release(results)
            _drain_result_consumer(spec["celery"])
        return m / elapsed

    # replay -------------------------------------------------------------------------

    def replay_callables(self) -> dict:
        """What each side does in the worker around a task, as callables: ours opens the
        token and replays the request (the user restored through the user_loader), the
        peer pushes an empty test request; plus ours in parts."""
        from flask import request
        from flask_celery_request import current_context
        from flask_celery_request.replay import replay_request
        from flask_celery_request.task import _AppState
        from flask_login import current_user

        run_in_test_request = self.apps.run_in_test_request
        app = self.flask_app
        sealer = _AppState.of(app).sealer
        with self.request_context():
            self.view_work(LOADED)
            token = current_context()
            live = (request.url, request.method, sorted((k, v) for k, v in request.form.items(multi=True)
                                                        if k != "csrf_token"), self.session_id)
        opened = sealer.open(token)
        anonymous = {key: value for key, value in opened.items() if key != "u"}

        def ours():
            with replay_request(app, sealer.open(token), token):
                pass

        def peer():
            run_in_test_request(app, _nothing)

        def open_only():
            sealer.open(token)

        def replay_only():
            with replay_request(app, opened, token):
                pass

        def replay_no_user():
            with replay_request(app, anonymous, token):
                pass

        # Ours replays the request it was sent from, signed in: check once, outside the timing.
        with replay_request(app, sealer.open(token), token):
            seen = (request.url, request.method, sorted(request.form.items(multi=True)), current_user.get_id())
        if seen != live:
            raise RuntimeError(f"ours replayed {seen}, not {live}")
        return {"ours": ours, "peer": peer, "ours: open": open_only, "ours: replay": replay_only,
                "ours: replay, no user": replay_no_user}

    def replay(self, stats: Stats) -> None:
        """``--replay-iterations`` replays per callable, in rotating timeit blocks, timed by
        this thread's CPU time (pure CPU work in this process; the SQLite read of the
        user is a page-cache hit), the best block being the undisturbed cost."""
        callables = self.replay_callables()
        block = self.args.replay_block
        timer = time.thread_time
        names = tuple(callables)
        for once in callables.values():  # warm caches
            timeit.Timer(once, timer=timer).timeit(block)
        stats.replay = _per_side(names)
        blocks = max(1, -(-self.args.replay_iterations // block))
        for index in range(blocks):
            for name in _rotations(names, index):
                seconds = timeit.Timer(callables[name], timer=timer).timeit(block)
                stats.replay[name].append(seconds / block * 1e6)


def _nothing() -> None:
    return None


def _create_bench_user(flask_app) -> tuple[int, str]:
    """The bench's signed-in user, a real row of its SQLite database (tables created
    here), and the id its sessions name it by (``User.get_id()``). Inserted with a Core INSERT so that the app's after_insert hook does not
    enqueue a welcome email to the shared broker."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import User

    with flask_app.app_context():
        db.create_all()
        user = User(**BENCH_USER)
        user.set_password("bench-password-not-a-secret")
        user_id, token = db.session.execute(
            sa.insert(User).values(**BENCH_USER, password_hash=user.password_hash)
            .returning(User.id, User.session_token)
        ).one()
        db.session.commit()
        db.session.remove()
    return user_id, f"{user_id}:{token}"


# --- report ----------------------------------------------------------------------------------


def _package_digest() -> str:
    """Which version of the package these figures are for: the sha1 of its source files'
    git blob ids (``git hash-object``), in name order."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE_SRC.glob("*.py")):
        data = path.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        digest.update(f"{path.name} {blob}\n".encode())
    return digest.hexdigest()[:12]


def _loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _paired_ratios(ours: list[float], base: list[float]) -> list[float]:
    """ours/base within each round (rounds pair runs close together in time)."""
    return [o / b for o, b in zip(ours, base)]


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.3f}-{max(ratios):.3f}x"


ROW_FORMAT = "{:<42}{:<13}{:>10}{:>10}{:>9}  {:<22}{}"


def _row(label, compared, base, value, ratio, target, verdict) -> str:
    return ROW_FORMAT.format(label, compared, f"{base:.1f}", f"{value:.1f}", f"{ratio:.3f}x", target, verdict)


def print_report(stats: Stats, args) -> None:
    med = statistics.median
    rows: list[str] = []
    spreads: list[str] = []

    def enqueue_row(case, side, base_side, target=None):
        series = stats.enqueue_median[case]
        ratios = _paired_ratios(series[side], series[base_side])
        ratio = med(ratios)
        verdict = "info" if target is None else _verdict(round(ratio, 3) <= target)
        rows.append(_row(f"enqueue us/call, {CASE_LABEL[case]}", f"{side}/{base_side}",
                         med(series[base_side]), med(series[side]), ratio,
                         "-" if target is None else f"<= {target:.2f}x", verdict))
        spreads.append(f"enqueue {CASE_LABEL[case]} {side}/{base_side} {_spread(ratios)}")

    def throughput_row(side, base_side, target=None):
        series = stats.throughput
        ratios = _paired_ratios(series[side], series[base_side])
        ratio = med(ratios)
        verdict = "info" if target is None else _verdict(round(ratio, 3) >= target)
        rows.append(_row("throughput tasks/s, no-op, prefork -c one", f"{side}/{base_side}",
                         med(series[base_side]), med(series[side]), ratio,
                         "-" if target is None else f">= {target:.2f}x", verdict))
        spreads.append(f"throughput {side}/{base_side} {_spread(ratios)}")

    enqueue_row(LOADED, "ours", "ref", 1.05)
    enqueue_row(COLD, "ours", "default", 1.10)
    throughput_row("ours", "ref", 0.90)
    enqueue_row(COLD, "ours", "ref")
    enqueue_row(COLD, "ref", "default")
    throughput_row("peer", "ref")
    throughput_row("ours", "peer")
    peer, ours = min(stats.replay["peer"]), min(stats.replay["ours"])
    rows.append(_row("replay us/task, CPU, best block", "ours/peer", peer, ours, ours / peer, "-", "info"))

    print()
    header = ROW_FORMAT.format("metric", "compared", "base", "value", "ratio", "target", "result")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(row)
    print("-" * len(header))
    print("compared: value side / base side. ref = plain celery.Celery configured like the app; "
          "default = Celery() with broker and backend only;")
    print("  peer = flask-celeryext's RequestContextTask pattern; ours = Flask-Celery-Request.")
    print(f"enqueue: base and value are medians over {args.rounds} rounds of each round's median call "
          f"({args.n} calls per side per round); ratio is the median of the per-round ratios.")
    print(f"throughput: medians over {args.throughput_rounds} rounds of {args.m} tasks per side; "
          "ratio is the median of the per-round ratios.")
    print("per-round ratio spread: " + "; ".join(spreads))

    for case in (LOADED, COLD):
        cpu = stats.enqueue_cpu[case]
        sides = ENQUEUE_SIDES[case]
        base = sides[0]
        parts = [f"{side} {med(cpu[side]):.1f}" for side in sides]
        mean = stats.enqueue_mean[case]
        print(f"(info) enqueue, {CASE_LABEL[case]}: sender CPU us per .delay() (median) " + ", ".join(parts)
              + f"; ours adds {med(cpu['ours']) - med(cpu[base]):.1f} us of CPU to {base}'s"
              + "; mean wall us " + ", ".join(f"{side} {med(mean[side]):.1f}" for side in sides))
    cpu = stats.throughput_cpu
    for side in ("ours", "peer"):
        parts = [f"{name} {med(cpu['ref'][name]):.0f} -> {med(cpu[side][name]):.0f}"
                 for name in ("sender", "worker main", "worker child", "redis")
                 if cpu["ref"].get(name) and cpu[side].get(name)]
        if parts:
            print(f"(info) throughput CPU us per task, ref -> {side}: " + ", ".join(parts))
    parts = stats.breakdown
    print(f"(info) where ours' extra CPU per .delay() goes, view read form+user ({max(1, args.n // 2)} calls each, "
          f"interleaved, median us): ref {parts['ref']:.1f}; with our header {parts['ref+header']:.1f} "
          f"(carrying it {parts['ref+header'] - parts['ref']:+.1f}); ours with the request already sealed "
          f"{parts['ours, sealed']:.1f} (the Task override {parts['ours, sealed'] - parts['ref+header']:+.1f}); "
          f"ours {parts['ours']:.1f} (sealing {parts['ours'] - parts['ours, sealed']:+.1f})")
    replay = stats.replay
    parts = [f"{name} {min(values):.1f}" for name, values in replay.items()]
    user = min(replay["ours: replay"]) - min(replay["ours: replay, no user"])
    print(f"(info) replay, CPU us per task, best of {len(replay['ours'])} blocks of {args.replay_block}: "
          + ", ".join(parts) + f" (restoring the user costs {user:.1f})")
    print("       median blocks: " + ", ".join(f"{name} {med(values):.1f}" for name, values in replay.items()))
    print(f"load average at the end: {_loadavg()} (other load on the machine skews absolute figures; "
          "the interleaving and pairing keep the ratios fair)")
    print("Timings are reported, never asserted: a MISS does not fail the run.")


def print_rounds(stats: Stats) -> None:
    def fmt(values):
        return " ".join(f"{v:8.1f}" for v in values)

    print("\nper round (in the order run):")
    for case in (LOADED, COLD):
        for side in ENQUEUE_SIDES[case]:
            print(f"  enqueue median us, {CASE_LABEL[case]:<20} {side:<8}{fmt(stats.enqueue_median[case][side])}")
    for side in THROUGHPUT_SIDES:
        print(f"  throughput tasks/s{'':<23}{side:<8}{fmt(stats.throughput[side])}")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="enqueue calls per side per round (1500)")
    parser.add_argument("--m", type=int, default=100, help="no-op tasks per side per throughput round (100)")
    parser.add_argument("--rounds", type=int, default=5, help="enqueue rounds per case (5)")
    parser.add_argument("--throughput-rounds", type=int, default=20,
                        help="rotating throughput rounds per side (20): short rounds close together "
                             "pair the sides under the same machine load")
    parser.add_argument("--replay-iterations", type=int, default=5000,
                        help="in-process replays per callable (5000)")
    parser.add_argument("--replay-block", type=int, default=100,
                        help="replays per timeit block; blocks rotate between the callables (100)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: small N, M, rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m, args.rounds, args.throughput_rounds = 100, 60, 2, 2
        args.replay_iterations, args.replay_block = 500, 50
    for name in ("n", "m", "rounds", "throughput_rounds", "replay_iterations", "replay_block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in ("flask", "werkzeug", "celery", "kombu", "redis", "flask-login", "cryptography"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def _same_settings(apps) -> int:
    """How many app settings ref, peer and ours share (all of celery_settings()), or raise."""
    from app.celery_config import celery_settings

    settings = celery_settings(apps.flask_app.config)
    for side in ("ref", "peer", "ours"):
        conf = apps.SIDES[side]["celery"].conf
        different = [key for key, value in settings.items() if conf[key] != value]
        if different:
            raise RuntimeError(f"the {side} side is not configured like the app: {different}")
    return len(settings)


def _print_header(args, apps, redis_url: str, external: bool) -> None:
    print("Flask-Celery-Request overhead benchmark")
    print(f"  {_versions()}")
    print(f"  {os.cpu_count()} CPUs, load average at start {_loadavg()}; broker and backend: "
          f"{'REDIS_URL' if external else 'embedded redis-server'} {redis_url}")
    print(f"  flask_celery_request: source digest {_package_digest()} ({PACKAGE_SRC.relative_to(ROOT)})")
    print(f"  ref, peer and ours share all {_same_settings(apps)} settings of celery_settings(app.config); "
          "default sets only broker_url and result_backend")
    print("  workers: celery -A bench.overhead_apps.<ref|ours|peer> worker -c 1 -P prefork "
          "--without-gossip --without-mingle --without-heartbeat -Q <own queue>")
    print(f"  request: POST {BASE_URL.rstrip('/')}{REQUEST_PATH}?{REQUEST_QUERY}, "
          f"{len(realistic_headers('x'))} headers (a signed-in session cookie of a real user), "
          f"{len(FORM)} form fields; a fresh request context per call")
    print(f"  enqueue: {args.rounds} rounds x {args.n} .delay() calls per side and case, the sides "
          "interleaved call by call, to a queue NO worker consumes (purged and counted every round)")
    print(f"  throughput: {args.throughput_rounds} rotating rounds x {args.m} no-op tasks per side, "
          "first send to last result", flush=True)


@contextmanager
def running_stack(args: argparse.Namespace, *, quiet: bool = False) -> Iterator[Bench]:
    """Redis, the environment, the apps and their workers; everything stopped on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="mbbench-", dir="/tmp"))
    redis_process = None
    workers: dict[str, CeleryWorker] = {}  # side -> its worker
    apps = None
    try:
        external = os.environ.get("REDIS_URL")
        if external:
            redis_url = external
        else:
            socket_path = tmp / "redis.sock"
            redis_process = start_redis(socket_path, tmp / "redis", persist=False, log_path=tmp / "redis.log")
            redis_url = redis_socket_url(socket_path)

        env = {
            "MICROBLOG_CONFIG": "testing",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
            "REDIS_URL": redis_url,
            "INSTANCE_PATH": str(tmp / "instance"),
            "BENCH_QUEUE_PREFIX": f"bench.{os.getpid()}.{uuid.uuid4().hex[:6]}",
            "FLASK_SKIP_DOTENV": "1",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "SECRET_KEY_FALLBACKS",
                     "TRUSTED_HOSTS", "SERVER_NAME"):
            os.environ.pop(name, None)  # same broker and backend for every side, no surprises
        os.environ.update(env)
        worker_env = dict(os.environ)

        from bench import overhead_apps as apps

        if not quiet:
            _print_header(args, apps, redis_url, bool(external))
        bench = Bench(apps, args)  # creates the database and its user before any worker reads it
        deadline = time.monotonic() + 90
        for side in apps.WORKER_SIDES:  # all of them starting at once, then each answers
            workers[side] = start_worker(side, apps.SIDES[side]["target"], apps.QUEUES[side]["work"],
                                         worker_env, tmp / f"worker-{side}.log")
        for side, worker in workers.items():
            worker.wait_ready(apps.SIDES[side]["celery"], deadline=deadline)

        bench.worker_pids = {side: worker.pid for side, worker in workers.items()}
        bench.redis_pid = redis_process.pid if redis_process is not None else None
        bench.probe()
        bench.check_cases()
        if not quiet:
            sizes = bench.sealed_sizes()
            print("  the workers answer; ours replays the request (url, method, form, scrubbed headers, "
                  "the signed-in user), peer runs in an empty test request, ref in none")
            print(f"  our sealed context header: {sizes[LOADED]} bytes (view read form+user), "
                  f"{sizes[COLD]} bytes (untouched request)", flush=True)
        yield bench
        for side, worker in workers.items():
            if not worker.running():
                raise RuntimeError(f"the {side} worker died during the run:\n{worker.log(4000)}")
    except BaseException as exc:
        # The frames of an interrupted round still hold AsyncResults; free them while
        # Redis is up, or each one complains from __del__ at interpreter exit.
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            traceback.clear_frames(exc.__traceback__)
            exc = exc.__context__
        raise
    finally:
        # A second TERM must not cut the cleanup short (every step below is bounded).
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTERM, signal.SIGHUP)}
        for side, worker in workers.items():
            try:
                worker.stop()
            except Exception as error:  # noqa: BLE001 - keep cleaning up
                print(f"could not stop the {side} worker (pid {worker.pid}): {error}", file=sys.stderr)
        if apps is not None:
            gc.collect()  # AsyncResults unsubscribe while Redis is still up
            for side in apps.SIDE_NAMES:
                for kind in ("work", "sink"):
                    try:
                        _purge_and_unbind(apps, side, apps.QUEUES[side][kind])
                    except Exception:  # noqa: BLE001 - cleanup is best effort
                        pass
                try:
                    apps.SIDES[side]["celery"].close()
                except Exception:  # noqa: BLE001
                    pass
        stop_redis(redis_process)
        shutil.rmtree(tmp, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _purge_and_unbind(apps, side: str, queue: str) -> None:
    celery_app = apps.SIDES[side]["celery"]
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_purge(queue)
        channel.client.delete(f"_kombu.binding.{queue}")


class _Phases:
    """Prints each phase as it starts, and how long the previous one took."""

    def __init__(self) -> None:
        self.started = None

    def __call__(self, name: str | None) -> None:
        now = time.monotonic()
        if self.started is None:
            print()
        else:
            print(f"({now - self.started:.0f} s)", flush=True)
        if name is not None:
            print(f"{name} ...", end=" ", flush=True)
        self.started = now


def main(argv=None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)

    started = time.monotonic()
    with running_stack(args) as bench:
        # Warm-up, discarded: connections, imports, the workers' first tasks.
        for case in (LOADED, COLD):
            bench.enqueue_round(case, min(200, args.n))
        for side in THROUGHPUT_SIDES:
            bench.throughput_round(side, min(100, args.m))

        stats = Stats()
        phase = _Phases()
        phase("enqueue")
        for index in range(args.rounds):
            for case in ((LOADED, COLD) if index % 2 == 0 else (COLD, LOADED)):
                for side, (median, mean, cpu) in bench.enqueue_round(case, args.n).items():
                    stats.enqueue_median[case][side].append(median)
                    stats.enqueue_mean[case][side].append(mean)
                    stats.enqueue_cpu[case][side].append(cpu)
        phase("send breakdown")
        stats.breakdown = bench.send_breakdown(max(1, args.n // 2))
        phase("throughput")
        for index in range(args.throughput_rounds):
            for side in _rotations(THROUGHPUT_SIDES, index):
                stats.throughput[side].append(
                    bench.throughput_round(side, args.m, stats.throughput_cpu[side]))
        phase("replay")
        bench.replay(stats)
        phase(None)

    print_rounds(stats)
    print_report(stats, args)
    print(f"(run took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
