#!/usr/bin/env python
"""What CeleryWithContext costs over a plain ``celery.Celery``, measured, not guessed.

    .venv/bin/python bench/context_overhead.py            # the full run (a few minutes)
    .venv/bin/python bench/context_overhead.py --quick    # a smoke run (tests/test_bench.py)

Both sides run in one process against the same Redis (an embedded redis-server on a
unix socket in a temp dir, or ``REDIS_URL`` when set), each with its own real worker:
``celery -A bench.overhead_apps.<side> worker -c 1 -P prefork``. Measurements
alternate between the sides (call by call for enqueue, round by round as plain, ours,
ours, plain, ... for throughput) so drift and noise hit both alike; figures are
medians over rounds, ratios the median of the per-round ratios. Every task is sent
from inside a fresh, realistic request: a POST with a query string, about a dozen
browser headers (a session cookie among them, which capture scrubs) and a few form
fields.

enqueue
    the ``.delay()`` call alone, timed with perf_counter; the request context is built
    and pushed outside the timed region (and, as in a real view, the form and
    ``current_user`` were already read; ``--cold`` skips that). Plain and ours calls are
    interleaved one by one so both see the same machine. The messages go to a queue no
    worker consumes (so neither worker competes for CPU while the sender is timed) and
    that queue is purged after every round, its length checked against the calls made.
throughput
    wall time from the first send to the last result of M no-op tasks through the
    real worker (sending, broker, worker, result backend), in tasks per second.
replay
    in-process, no broker: ours is ``verify_request_context`` + ``with
    replay_request(...): pass``; the recipe is the well-known kwargs recipe's replay,
    ``with app.test_request_context(...): app.process_response(app.make_response(""))``,
    given the same captured request; timed in short timeit blocks alternating between
    the two, by this thread's CPU time (``--replay-clock wall`` for the wall clock), the
    best block reported (and the median block alongside).

Targets (from the issue) are reported as PASS/MISS; a MISS never fails the run: the
exit status is non-zero only when something actually broke.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import redis_socket_url  # noqa: E402
from devservers.processes import die_with_parent, stop_process_group  # noqa: E402
from devservers.redis_server import start_redis, stop_redis  # noqa: E402

BIN = Path(sys.executable).parent
SECRET_KEY = "bench-secret-key-0123456789abcdef-not-for-production"

# The realistic request every task is sent from.
REQUEST_PATH = "/export"
REQUEST_QUERY = "page=2&sort=new&tag=a&tag=b"
BASE_URL = "https://blog.example.org/"
FORM = {
    "title": "Quarterly export: drafts & published posts",
    "format": "json",
    "include_drafts": "y",
    "csrf_token": "IjY0ZjE5YjQ1ZGM2ZTFhYTk4ZmQ3ZjE0ZDE5ZGQ2MjE5NDlhNTcwYjEi.ZxQ1nw.Jq3zv0n3sXf4",
}


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


#: SIGTERM a worker if the benchmark dies; the finally block is the real cleanup.
_die_with_parent = die_with_parent(signal.SIGTERM)


class Worker:
    """A real ``celery worker -c 1 -P prefork`` in its own process group."""

    def __init__(self, side: str, target: str, queue: str, env: dict[str, str], log_path: Path) -> None:
        self.side = side
        self.hostname = f"bench-{side}-{os.getpid()}@localhost"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "celery"), "-A", target, "worker", "-c", "1", "-P", "prefork",
             "--without-gossip", "--without-mingle", "-Q", queue, "-l", "warning",
             "-n", self.hostname],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def wait_ready(self, celery_app, deadline: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.side} worker exited with {self.process.returncode}:\n{self.log()}"
                )
            if celery_app.control.ping(destination=[self.hostname], timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.side} worker did not answer ping in time:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 20.0) -> None:
        try:
            stop_process_group(self.process, timeout)
        finally:
            self._log.close()


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


def _raise_on_signal(signum, frame):
    raise SystemExit(128 + signum)


# --- measurements --------------------------------------------------------------------------


@dataclass
class Stats:
    enqueue_means: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "ours": []})
    enqueue_medians: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "ours": []})
    enqueue_cpu: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "ours": []})
    throughput: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "ours": []})
    throughput_cpu: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {"plain": {}, "ours": {}})
    replay: dict[str, list[float]] = field(default_factory=lambda: {"recipe": [], "ours": []})


class Bench:
    def __init__(self, apps, args: argparse.Namespace) -> None:
        self.apps = apps
        self.flask_app = apps.flask_app
        self.args = args
        self.worker_pids: dict[str, int] = {}  # side -> worker main process
        self.redis_pid: int | None = None
        serializer = self.flask_app.session_interface.get_signing_serializer(self.flask_app)
        self.session_cookie = serializer.dumps({"_fresh": False, "csrf_token": uuid.uuid4().hex * 2})

    # The realistic request -----------------------------------------------------------

    def request_context(self):
        return self.flask_app.test_request_context(
            f"{REQUEST_PATH}?{REQUEST_QUERY}",
            method="POST",
            base_url=BASE_URL,
            headers=realistic_headers(self.session_cookie),
            data=FORM,
            environ_base={"REMOTE_ADDR": "203.0.113.7"},
        )

    def view_work(self) -> None:
        """What the view did before sending the task: read the form, load the user."""
        if self.args.cold:
            return
        from flask import request
        from flask_login import current_user

        request.form  # noqa: B018 - parse it, as the view's WTForm does
        current_user.is_authenticated  # noqa: B018 - load it, as login_required does

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
        ctx = self.request_context()
        ctx.push()
        try:
            self.view_work()
            results.append(task.delay())
        finally:
            ctx.pop()

    def probe(self) -> None:
        """Both workers answer, and ours really runs inside the replayed request."""
        timeout = 60
        for side in ("plain", "ours"):
            results: list = []
            try:
                self.send_once(self.apps.SIDES[side]["probe"], results)
                seen = results[0].get(timeout=timeout)
                self.forget(side, results)
            finally:
                _release(results)
            if side == "plain":
                if seen["has_request"]:
                    raise RuntimeError("the plain task ran inside a Flask request?")
                continue
            expected_url = f"{BASE_URL.rstrip('/')}{REQUEST_PATH}?{REQUEST_QUERY}"
            form = dict(seen["form"])
            headers = {name.lower() for name, _ in seen["headers"]}
            problems = []
            if not seen["has_request"]:
                problems.append("no request context in the worker")
            else:
                if seen["url"] != expected_url or seen["method"] != "POST":
                    problems.append(f"replayed {seen['method']} {seen['url']}")
                if form != {k: v for k, v in FORM.items() if k != "csrf_token"}:
                    problems.append(f"replayed form {form}")
                if "cookie" in headers or "x-request-id" not in headers:
                    problems.append(f"replayed headers {sorted(headers)}")
            if problems:
                raise RuntimeError("our worker did not replay the request: " + "; ".join(problems))

    # enqueue ------------------------------------------------------------------------

    def enqueue_round(self, n: int) -> dict[str, tuple[float, float, float]]:
        """N ``.delay()`` calls per side, interleaved call by call.

        Per side: (mean, median) wall-clock microseconds per call, and the median of this
        thread's CPU time per call (what the sender itself spends, waits excluded).

        Interleaving (plain, ours, ours, plain, ...) makes both sides share whatever else
        the machine is doing at that moment, which per-side blocks do not.
        """
        sides = ("plain", "ours")
        tasks = {side: self.apps.SIDES[side]["sink"] for side in sides}
        queues = {side: self.apps.QUEUES[side]["sink"] for side in sides}
        for side in sides:
            self.purge(side, queues[side])
        times: dict[str, list[float]] = {side: [] for side in sides}
        cpu_times: dict[str, list[float]] = {side: [] for side in sides}
        results: list = []
        try:
            gc.collect()
            clock, cpu_clock = time.perf_counter, time.thread_time
            for i in range(n):
                for side in (sides if i % 2 == 0 else sides[::-1]):
                    ctx = self.request_context()
                    ctx.push()
                    try:
                        self.view_work()
                        c0 = cpu_clock()
                        t0 = clock()
                        result = tasks[side].delay()
                        t1 = clock()
                        c1 = cpu_clock()
                    finally:
                        ctx.pop()
                    times[side].append(t1 - t0)
                    cpu_times[side].append(c1 - c0)
                    results.append(result)
                    result = None
            for side in sides:
                queued = self.purge(side, queues[side])
                if queued != n:
                    raise RuntimeError(f"{side}: sent {n} messages to {queues[side]} but found {queued} there")
        finally:
            _release(results)  # AsyncResults unsubscribe from the backend here, outside the timing
        return {
            side: (statistics.fmean(values) * 1e6, statistics.median(values) * 1e6,
                   statistics.median(cpu_times[side]) * 1e6)
            for side, values in times.items()
        }

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
        """Tasks per second from the first send to the last result; with ``cpu``, also
        append each process's CPU microseconds per task (sender, worker main and child,
        Redis) over the round, to show where the time went."""
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
                    self.view_work()
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
            _release(results)
        return m / elapsed

    # replay -------------------------------------------------------------------------

    def replay_callables(self):
        from flask import request

        from app.celery_context import replay_request, sign_request_context, verify_request_context

        app = self.flask_app
        with self.request_context():
            self.view_work()
            token = sign_request_context(app)
            # What the kwargs recipe captures, scrubbed exactly as ours is (same headers,
            # same form, the query string kept) so both replay the same request.
            context = verify_request_context(app, token)
            carried = context["e"]
            recipe = {
                "path": request.path,
                "query_string": request.query_string.decode("latin-1"),
                "base_url": request.url_root,
                "method": request.method,
                "headers": {
                    key[5:].replace("_", "-").title(): value
                    for key, value in carried.items() if key.startswith("HTTP_")
                },
                "data": dict(context.get("f") or []),
            }
            live = (request.url, request.method, sorted(dict(context["f"]).items()))

        def ours_once():
            verified = verify_request_context(app, token)
            with replay_request(app, verified, token):
                pass

        def recipe_once():
            with app.test_request_context(**recipe):
                result = None
                app.process_response(app.make_response(result or ""))

        # Both replay the same request: check once, outside the timing.
        for name, enter in (
            ("ours", lambda: replay_request(app, verify_request_context(app, token), token)),
            ("recipe", lambda: app.test_request_context(**recipe)),
        ):
            with enter():
                seen = (request.url, request.method, sorted(request.form.to_dict().items()))
                if seen != live:
                    raise RuntimeError(f"the {name} replay rebuilt {seen}, not {live}")
        return ours_once, recipe_once, len(token)

    def replay(self, stats: Stats) -> None:
        """``--replay-iterations`` replays per side, in alternating timeit blocks.

        Short alternating blocks (``--replay-block``) rather than a few long loops: on a
        shared machine a long loop is as likely as not to straddle someone else's burst,
        while the best block of many is the undisturbed cost, for both sides alike.
        """
        ours_once, recipe_once, _ = self.replay_callables()
        block = self.args.replay_block
        # Replay is pure CPU work in this process (no broker, no database round trip), so
        # it is timed in this thread's CPU time: time the scheduler gave to other
        # processes does not count, which on an idle machine is the same as wall time.
        timer = time.thread_time if self.args.replay_clock == "cpu" else time.perf_counter
        for once in (ours_once, recipe_once):  # warm caches
            timeit.Timer(once, timer=timer).timeit(block)
        blocks = max(1, -(-self.args.replay_iterations // block))
        for index in range(blocks):
            order = [("ours", ours_once), ("recipe", recipe_once)]
            if index % 2:
                order.reverse()
            for name, once in order:
                seconds = timeit.Timer(once, timer=timer).timeit(block)
                stats.replay[name].append(seconds / block * 1e6)


# --- report ----------------------------------------------------------------------------------


def _blob_hash(path: Path) -> str:
    """The file's git blob id: which version of the module these figures are for."""
    import hashlib

    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:12]


def _loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _paired_ratio(ours: list[float], base: list[float]) -> float:
    """The median over rounds of ours/base within each round (rounds pair adjacent runs)."""
    return statistics.median(o / b for o, b in zip(ours, base))


def print_report(stats: Stats, args) -> None:
    med = statistics.median
    rows = []
    for label, key in (("enqueue us/call (median)", "enqueue_medians"),
                       ("enqueue us/call (mean)", "enqueue_means")):
        series = getattr(stats, key)
        ratio = _paired_ratio(series["ours"], series["plain"])
        rows.append((label, med(series["plain"]), med(series["ours"]), ratio, "<= 1.05x",
                     round(ratio, 3) <= 1.05))
    ratio = _paired_ratio(stats.throughput["ours"], stats.throughput["plain"])
    rows.append(("throughput tasks/s", med(stats.throughput["plain"]), med(stats.throughput["ours"]),
                 ratio, ">= 0.95x", round(ratio, 3) >= 0.95))
    recipe, ours = min(stats.replay["recipe"]), min(stats.replay["ours"])
    ratio = ours / recipe
    rows.append(("replay us/task (best)", recipe, ours, ratio, "<= 0.50x", round(ratio, 3) <= 0.5))

    print()
    print(f"{'metric':<26}{'plain/recipe':>14}{'ours':>12}{'ratio':>10}  {'target':<10}result")
    print("-" * 80)
    for label, base, value, ratio, target, ok in rows:
        print(f"{label:<26}{base:>14.1f}{value:>12.1f}{ratio:>9.3f}x  {target:<10}{_verdict(ok)}")
    print("-" * 80)
    cpu = stats.throughput_cpu
    parts = [f"{name} {med(cpu['plain'][name]):.0f} -> {med(cpu['ours'][name]):.0f}"
             for name in ("sender", "worker main", "worker child", "redis")
             if cpu["plain"].get(name) and cpu["ours"].get(name)]
    if parts:
        print(f"{'(info) throughput CPU':<26}us per task, plain -> ours: " + ", ".join(parts))
    cpu_plain, cpu_ours = med(stats.enqueue_cpu["plain"]), med(stats.enqueue_cpu["ours"])
    print(f"{'(info) enqueue sender CPU':<26}{cpu_plain:>14.1f}{cpu_ours:>12.1f}"
          f"{_paired_ratio(stats.enqueue_cpu['ours'], stats.enqueue_cpu['plain']):>9.3f}x  "
          f"median us of this thread's CPU per .delay(); ours adds {cpu_ours - cpu_plain:.1f} us")
    print("plain/recipe: plain celery.Celery for enqueue and throughput; the kwargs recipe's "
          "test_request_context replay for replay.")
    spread = sorted(o / p for o, p in zip(stats.throughput["ours"], stats.throughput["plain"]))
    print(f"enqueue, throughput: plain and ours are medians over {args.rounds} and "
          f"{args.throughput_rounds} rounds; ratio is the median of the per-round ours/plain ratios "
          f"(throughput's ranged {spread[0]:.2f}-{spread[-1]:.2f}x: that is the machine's noise).")
    print(f"replay: {args.replay_iterations} replays per side in alternating timeit blocks of "
          f"{args.replay_block}, {'thread CPU time' if args.replay_clock == 'cpu' else 'wall clock'}; "
          f"best block shown (median block: recipe "
          f"{med(stats.replay['recipe']):.1f} us, ours {med(stats.replay['ours']):.1f} us, ratio "
          f"{med(stats.replay['ours']) / med(stats.replay['recipe']):.3f}x).")
    print(f"load average at the end: {_loadavg()} (other load on the machine skews absolute figures; "
          f"the interleaving and pairing keep the ratios fair)")
    print("Timings are reported, never asserted: a MISS does not fail the run.")


def print_rounds(stats: Stats) -> None:
    def fmt(values):
        return " ".join(f"{v:8.1f}" for v in values)

    print("\nper round (in the order run):")
    for side in ("plain", "ours"):
        print(f"  enqueue median us  {side:<6}{fmt(stats.enqueue_medians[side])}")
    for side in ("plain", "ours"):
        print(f"  enqueue mean us    {side:<6}{fmt(stats.enqueue_means[side])}")
    for side in ("plain", "ours"):
        print(f"  enqueue CPU us     {side:<6}{fmt(stats.enqueue_cpu[side])}")
    for side in ("plain", "ours"):
        print(f"  throughput tasks/s {side:<6}{fmt(stats.throughput[side])}")
    for side in ("recipe", "ours"):
        values = sorted(stats.replay[side])
        pick = {"best": values[0], "p10": values[len(values) // 10],
                "median": statistics.median(values), "p90": values[len(values) * 9 // 10]}
        print(f"  replay us/task     {side:<7}" + " ".join(f"{k} {v:.1f}" for k, v in pick.items())
              + f"  ({len(values)} blocks)")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="enqueue calls per side per round (2000)")
    parser.add_argument("--m", type=int, default=400, help="no-op tasks per side per throughput round (400)")
    parser.add_argument("--rounds", type=int, default=5, help="enqueue rounds per side (5)")
    parser.add_argument("--throughput-rounds", type=int, default=15,
                        help="alternating throughput rounds per side (15): short rounds close together "
                             "pair the two sides under the same machine load")
    parser.add_argument("--replay-iterations", type=int, default=25000,
                        help="in-process replays per side (25000)")
    parser.add_argument("--replay-block", type=int, default=250,
                        help="replays per timeit block; blocks alternate between the sides (250)")
    parser.add_argument("--replay-clock", choices=("cpu", "wall"), default="cpu",
                        help="time replay by this thread's CPU time (default) or by the wall clock")
    parser.add_argument("--cold", action="store_true",
                        help="do not pre-read the form and current_user before sending "
                             "(by default the view has, as a real view does)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: small N, M, rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m, args.rounds, args.throughput_rounds = 100, 100, 2, 2
        args.replay_iterations, args.replay_block = 1000, 50
    for name in ("n", "m", "rounds", "throughput_rounds", "replay_iterations", "replay_block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _print_header(args, apps, redis_url: str, external: bool) -> None:
    import celery

    print("CeleryWithContext overhead benchmark")
    print(f"  python {platform.python_version()}, celery {celery.__version__}, "
          f"{os.cpu_count()} CPUs, broker {'REDIS_URL' if external else 'embedded redis-server'} "
          f"{redis_url}")
    print("  workers: celery -A bench.overhead_apps.<plain|ours> worker -c 1 -P prefork "
          "--without-gossip --without-mingle -Q <own queue>")
    print(f"  request: POST {BASE_URL.rstrip('/')}{REQUEST_PATH}?{REQUEST_QUERY}, "
          f"{len(realistic_headers('x'))} headers (Cookie scrubbed), {len(FORM)} form fields "
          f"(csrf_token scrubbed); the view {'did not read' if args.cold else 'already read'} "
          f"the form and current_user")
    print(f"  enqueue: {args.n} .delay() calls per side per round, plain and ours interleaved call "
          f"by call, each in a fresh request, to a queue NO worker consumes (so no worker competes "
          f"for CPU while the sender is timed; purged and counted after every round)")
    print(f"  throughput: {args.m} no-op tasks per side per round through the real workers, "
          f"first send to last result")
    print(f"  rounds: {args.rounds} enqueue, {args.throughput_rounds} throughput; throughput rounds "
          f"alternate (plain, ours, ours, plain, ...)")
    print(f"  app/celery_context.py: git blob {_blob_hash(ROOT / 'app' / 'celery_context.py')}")
    print(f"  load average at start: {_loadavg()}", flush=True)


@contextmanager
def running_stack(args: argparse.Namespace, *, quiet: bool = False) -> Iterator[Bench]:
    """Redis, the environment, both apps and both workers; everything stopped on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="mbbench-", dir="/tmp"))
    redis_process = None
    workers: list[Worker] = []
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
            os.environ.pop(name, None)  # same broker and backend for both sides, no surprises
        os.environ.update(env)
        worker_env = dict(os.environ)

        from bench import overhead_apps as apps

        if not quiet:
            _print_header(args, apps, redis_url, bool(external))
        deadline = time.monotonic() + 90
        for side in ("plain", "ours"):
            workers.append(Worker(side, apps.SIDES[side]["target"], apps.QUEUES[side]["work"],
                                  worker_env, tmp / f"worker-{side}.log"))
        for worker in workers:
            worker.wait_ready(apps.SIDES[worker.side]["celery"], deadline)

        bench = Bench(apps, args)
        bench.worker_pids = {worker.side: worker.process.pid for worker in workers}
        bench.redis_pid = redis_process.pid if redis_process is not None else None
        bench.probe()
        if not quiet:
            from app.celery_context import sign_request_context

            print("  both workers answer; ours replays the request (url, method, form, scrubbed headers)")
            with bench.request_context():
                bench.view_work()
                size = len(sign_request_context(apps.flask_app))
            print(f"  ours adds a {size}-byte signed context header", flush=True)
        yield bench
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"the {worker.side} worker died during the run:\n{worker.log()}")
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
        for worker in workers:
            try:
                worker.stop()
            except Exception as error:  # noqa: BLE001 - keep cleaning up
                print(f"could not stop the {worker.side} worker (pid {worker.process.pid}): {error}",
                      file=sys.stderr)
        if apps is not None:
            gc.collect()  # AsyncResults unsubscribe while Redis is still up
            for side in ("plain", "ours"):
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


def main(argv=None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)

    with running_stack(args) as bench:
        # Warm-up, discarded: connections, imports, the workers' first tasks.
        bench.enqueue_round(min(200, args.n))
        for side in ("plain", "ours"):
            bench.throughput_round(side, min(100, args.m))

        stats = Stats()
        print("\nenqueue ...", flush=True)
        for _ in range(args.rounds):
            for side, (mean, median, cpu) in bench.enqueue_round(args.n).items():
                stats.enqueue_means[side].append(mean)
                stats.enqueue_medians[side].append(median)
                stats.enqueue_cpu[side].append(cpu)
        print("throughput ...", flush=True)
        for index in range(args.throughput_rounds):
            for side in (("plain", "ours") if index % 2 == 0 else ("ours", "plain")):
                stats.throughput[side].append(
                    bench.throughput_round(side, args.m, stats.throughput_cpu[side]))
        print("replay ...", flush=True)
        bench.replay(stats)

    print_rounds(stats)
    print_report(stats, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
