#!/usr/bin/env python
"""How task throughput scales with the number of worker processes on this machine.

    .venv/bin/python bench/worker_scaling.py            # the full run (a minute or two)
    .venv/bin/python bench/worker_scaling.py --quick    # a smoke run (tests/test_bench_scaling.py)

For each concurrency in (1, 2, 4) one real worker is started,
``celery -A celery_worker.celery worker -c N -P prefork -Q celery,exports,mail``, against
an embedded redis-server (unix socket in a temp dir) and a SQLite file seeded with a
few users with posts each (``app.cli.seed_posts``). Then:

no-op
    M no-op tasks (``bench.scaling_tasks.noop`` on the app's CeleryWithContext, so each
    one carries and replays its request), each sent from inside a fresh request
    context; tasks per second from the first send to the last result.
export
    one ``export_posts`` per user (``app.jobs.launch_task``, from inside a request
    context), in rounds; exports and posts per second from the first launch until
    every Task row is SUCCESS (the database is polled). Emails are suppressed
    (MAIL_SUPPRESS_SEND=1), the export files and Task rows are real.

The worker is stopped between concurrencies. Timings are reported, never asserted:
the exit status is non-zero only when something actually broke (a task failed, a
worker died or did not start, a result did not come back).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.context_overhead import _loadavg, _raise_on_signal  # noqa: E402
from config import redis_socket_url  # noqa: E402
from devservers.redis_server import start_redis, stop_redis  # noqa: E402
from devservers.workers import CeleryWorker  # noqa: E402

SECRET_KEY = "bench-secret-key-0123456789abcdef-not-for-production"
CONCURRENCIES = (1, 2, 4)
QUEUES = "celery,exports,mail"
BASE_URL = "https://blog.example.org/"
RESULT_TIMEOUT = 120.0


class BenchError(RuntimeError):
    pass


def start_worker(concurrency: int, env: dict[str, str], log_path: Path) -> CeleryWorker:
    """``celery -A celery_worker.celery worker -c N -P prefork -Q celery,exports,mail`` (the
    no-op task included) in its own process group; SIGTERMed if the benchmark dies."""
    return CeleryWorker(
        "celery_worker.celery", env, log_path, hostname=f"scale{concurrency}-{os.getpid()}@localhost",
        concurrency=concurrency, pool="prefork", queues=QUEUES.split(","), include=["bench.scaling_tasks"],
        loglevel="warning", name=f"the -c {concurrency} worker", parent_death_signal=signal.SIGTERM,
    ).start()


# --- seeding and measuring (in this process, with the real app) ------------------------------


def seed(users: int, posts: int) -> list[int]:
    import sqlalchemy as sa

    from app.cli import seed_posts
    from app.extensions import db
    from app.models import User, utcnow

    db.create_all()
    table = User.__table__
    # Core inserts: no ORM events (welcome emails and the like) for these owners of posts.
    db.session.execute(sa.insert(table), [
        {"username": f"bench{n}", "email": f"bench{n}@example.com", "created": utcnow()}
        for n in range(users)
    ])
    db.session.commit()
    ids = []
    for user in db.session.scalars(sa.select(User).order_by(User.id)):
        if seed_posts(user, posts) != posts:
            raise BenchError(f"seeding {user.username} did not insert {posts} posts")
        ids.append(user.id)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.session.remove()
    return ids


def request_context(flask_app):
    return flask_app.test_request_context("/export", method="POST", base_url=BASE_URL,
                                          environ_base={"REMOTE_ADDR": "203.0.113.7"})


def noop_round(flask_app, worker: CeleryWorker, m: int) -> float:
    """M no-ops, each sent from a fresh request; tasks/s from first send to last result."""
    from bench.scaling_tasks import noop

    results = []
    try:
        began = time.perf_counter()
        for _ in range(m):
            with request_context(flask_app):
                results.append(noop.delay())
        for result in results:
            try:
                result.get(timeout=RESULT_TIMEOUT)
            except Exception as exc:
                worker.check_alive()
                raise BenchError(f"a no-op task did not succeed: {exc!r}") from exc
        seconds = time.perf_counter() - began
        backend = results[0].backend if results else None
        if backend is not None:  # keep Redis small, outside the timed region
            keys = [backend.get_key_for_task(r.id) for r in results]
            for start in range(0, len(keys), 500):
                backend.client.delete(*keys[start:start + 500])
    finally:
        results.clear()
        gc.collect()
    return m / seconds


def export_round(flask_app, worker: CeleryWorker, user_ids: list[int]) -> float:
    """One export per user; seconds from the first launch until every Task row is SUCCESS."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.jobs import launch_task
    from app.models import Task, TaskState, User
    from app.tasks import export_posts

    task_ids = []
    deadline = time.monotonic() + RESULT_TIMEOUT * max(1, len(user_ids))
    began = time.perf_counter()
    for user_id in user_ids:
        with request_context(flask_app):
            user = db.session.get(User, user_id)
            task_ids.append(launch_task(user, export_posts, "Exporting posts (benchmark)", user_id).id)
            db.session.remove()
    while True:
        rows = db.session.execute(
            sa.select(Task.state, sa.func.count()).where(Task.id.in_(task_ids)).group_by(Task.state)
        ).all()
        db.session.rollback()  # a fresh read next time
        states = {state: count for state, count in rows}
        if states.get(TaskState.SUCCESS, 0) == len(task_ids):
            seconds = time.perf_counter() - began
            break
        if states.get(TaskState.FAILURE):
            errors = db.session.scalars(
                sa.select(Task.error).where(Task.id.in_(task_ids), Task.state == TaskState.FAILURE)).all()
            raise BenchError(f"{len(errors)} export(s) failed: {errors[:3]}\n{worker.log(4000)}")
        worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"exports not all done in time: {states}\n{worker.log(4000)}")
        time.sleep(0.02)
    db.session.remove()
    return seconds


@dataclass
class Row:
    workers: int
    noop_per_s: float
    exports_per_s: float
    posts_per_s: float


def measure(flask_app, celery_app, env: dict[str, str], tmp: Path, concurrency: int,
            user_ids: list[int], args: argparse.Namespace) -> Row:
    worker = start_worker(concurrency, env, tmp / f"worker-{concurrency}.log")
    try:
        worker.wait_ready(celery_app, timeout=90.0)
        # Warm-up, discarded: every pool process takes a few tasks and one export.
        noop_round(flask_app, worker, max(10, 5 * concurrency))
        export_round(flask_app, worker, user_ids[:concurrency])
        noop = noop_round(flask_app, worker, args.tasks)
        seconds = 0.0
        for _ in range(args.export_rounds):
            seconds += export_round(flask_app, worker, user_ids)
        worker.check_alive()
    finally:
        worker.stop()
    exports = len(user_ids) * args.export_rounds
    return Row(concurrency, noop, exports / seconds, exports * args.posts / seconds)


# --- report ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    base = rows[0]
    print()
    print(f"{'workers':>7}  {'no-op tasks/s':>13}  {'speed-up':>8}  {'exports/s':>9}  "
          f"{'posts/s':>10}  {'speed-up':>8}")
    for row in rows:
        print(f"{row.workers:>7}  {row.noop_per_s:>13.1f}  {row.noop_per_s / base.noop_per_s:>7.2f}x  "
              f"{row.exports_per_s:>9.2f}  {row.posts_per_s:>10.0f}  "
              f"{row.exports_per_s / base.exports_per_s:>7.2f}x")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks per concurrency (1000)")
    parser.add_argument("--users", type=int, default=20, help="users, one export each per round (20)")
    parser.add_argument("--posts", type=int, default=5000, help="posts per user (5000)")
    parser.add_argument("--export-rounds", type=int, default=2, help="export rounds per concurrency (2)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.users, args.posts, args.export_rounds = 50, 4, 500, 1
    for name in ("tasks", "users", "posts", "export_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)

    import celery

    cpus = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cpus
    print("Worker scaling benchmark")
    print(f"  python {platform.python_version()}, celery {celery.__version__}, {cpus} CPUs "
          f"({usable} usable by this process), {platform.machine()} {platform.system()}")
    print(f"  load average at start: {_loadavg()}")
    print(f"  workers: celery -A celery_worker.celery worker -c N -P prefork -Q {QUEUES}, "
          f"N in {CONCURRENCIES}, one at a time, embedded redis-server")
    print(f"  no-op: {args.tasks} tasks per N, each sent from a request, first send to last result")
    print(f"  export: {args.users} users x {args.posts} posts, one export per user per round, "
          f"{args.export_rounds} round(s) per N, until every Task row is SUCCESS (emails suppressed)",
          flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mbscale-", dir="/tmp"))
    redis_process = None
    flask_app = None
    rows: list[Row] = []
    try:
        socket_path = tmp / "redis.sock"
        redis_process = start_redis(socket_path, tmp / "redis", persist=False, log_path=tmp / "redis.log")
        env = {
            "MICROBLOG_CONFIG": "testing",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
            "REDIS_URL": redis_socket_url(socket_path),
            "INSTANCE_PATH": str(tmp / "instance"),
            "EXPORTS_DIR": str(tmp / "instance" / "exports"),
            "MAIL_SUPPRESS_SEND": "1",
            "FLASK_SKIP_DOTENV": "1",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "SECRET_KEY_FALLBACKS",
                     "TRUSTED_HOSTS", "SERVER_NAME", "MAIL_SERVER", "MAIL_PORT"):
            os.environ.pop(name, None)
        os.environ.update(env)
        worker_env = dict(os.environ)

        from app import create_app
        from config import TestingConfig

        flask_app = create_app(TestingConfig(os.environ))
        import bench.scaling_tasks  # noqa: F401 - registers the no-op here too
        from app.extensions import celery as celery_app

        with flask_app.app_context():
            began = time.perf_counter()
            user_ids = seed(args.users, args.posts)
            print(f"  seeded {len(user_ids)} users x {args.posts} posts in "
                  f"{time.perf_counter() - began:.1f}s", flush=True)
            for concurrency in CONCURRENCIES:
                row = measure(flask_app, celery_app, worker_env, tmp, concurrency, user_ids, args)
                rows.append(row)
                print(f"  -c {concurrency}: {row.noop_per_s:.1f} no-op tasks/s, "
                      f"{row.exports_per_s:.2f} exports/s", flush=True)
    except BaseException as exc:
        seen = set()  # free AsyncResults held by the frames while Redis is still up
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            traceback.clear_frames(exc.__traceback__)
            exc = exc.__context__
        raise
    finally:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGHUP)}
        gc.collect()
        if flask_app is not None:
            try:
                from app.extensions import celery as celery_app

                celery_app.close()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
        stop_redis(redis_process)
        shutil.rmtree(tmp, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    print_table(rows)
    print(f"\n  {cpus} CPUs; load average at the end: {_loadavg()}")
    print(f"  Note: with {cpus} CPUs, processes beyond {cpus} help only while others wait "
          f"(fsync, database writes); no-op throughput is likely limited by the single sender, "
          f"Redis and the worker's one consumer process rather than by the pool size (not profiled).")
    print("  Timings are reported, never asserted; other load on the machine skews them.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
