#!/usr/bin/env python
"""How the posts export scales: time and peak memory at 10k, 100k and 1M posts.

    .venv/bin/python bench/export_scaling.py                   # the full run (about two minutes)
    .venv/bin/python bench/export_scaling.py --quick           # a smoke run (tests/test_bench_export.py)
    .venv/bin/python bench/export_scaling.py --sizes 50000 --repeat 3

Three ways of exporting one user's posts are measured in the same run, on the same
SQLite databases:

ours
    ``app.exports.write_posts_export(user_id, name, ProgressReporter(task_id))``, the
    export task's work: rows streamed from the database and written a batch at a time
    to ``EXPORTS_DIR``, progress recorded on a real ``Task`` row.
s3
    the same, with ``EXPORTS_STORAGE_URL=s3://...``: the file streamed by multipart
    upload (8 MiB parts) to moto's S3-compatible server, a process of its own on
    127.0.0.1 that the benchmark starts (``--no-s3`` to skip it). The server runs on
    the same CPUs, so its time is in the figure, as a store's network time would be.
naive
    the Mega-Tutorial's export (its RQ ``export_posts`` task, without the per-post
    progress and sleep): every post loaded as an ORM object, a list of dicts built
    (``{"body": p.body, "timestamp": p.timestamp.isoformat() + "Z"}``), then
    ``json.dumps({"posts": data})`` written to a file (this app's timestamps are
    timezone-aware, so the tutorial's expression yields ``...+00:00Z``; kept as is, the
    cost is the same). The tutorial passes ``indent=4``, which makes ``json`` fall back
    from its C encoder to the pure-Python one; ``--naive-indent 4`` measures that. The
    default is the kinder, faster form. (The naive peak is reached while the ORM
    objects are loaded, so the indent hardly changes it.)

The local sides write their file and ``fsync`` it. Each database is seeded once per size with
``app.cli.seed_posts`` (the user being exported, plus another user with a few posts so
the query has to filter). Every measurement runs in a fresh child process, so its peak
memory is its own: the child builds the app, reads its high-water RSS (``VmHWM``, or
``ru_maxrss`` where /proc is missing) as the baseline, runs one export, reads the
high-water mark again, and then checks the file: valid JSON, the expected number of
posts, every body in timestamp order. A benchmark of a broken export is worthless, so
a wrong file is an error (the s3 side's is read back from the store). With
``--repeat N`` each side runs N times per size (the sides taking turns) and the best
(lowest) time and peak are reported.

Targets (from the issue) are reported as PASS/MISS; a MISS never fails the run: the
exit status is non-zero only when something actually broke.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 20_000)
USERNAME = "bench"
#: Posts of a second user in every database: the export must leave them out.
OTHER_POSTS = 1_000
CHILD_TIMEOUT = 900
SECRET_KEY = "bench-secret-key-0123456789abcdef-not-for-production"

# Targets from the issue, at 1M posts.
TARGET_SIZE = 1_000_000
GROWTH_FROM = 100_000
TARGET_TIME_FRACTION = 5      # ours at most 1/5 of the naive time
TARGET_MEMORY_FRACTION = 20   # ours at most 1/20 of the naive peak memory
TARGET_GROWTH_MB = 16         # ours' peak grows less than this from 100k to 1M posts

MB = 1024 * 1024


# --- the child: one seeding or one measurement per process -----------------------------------


def high_water_rss_bytes() -> int:
    """This process image's peak resident set size.

    ``VmHWM`` belongs to the current address space, so it starts afresh at exec;
    ``ru_maxrss`` can carry over the parent's peak through a vfork-based spawn.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child_app(database: Path, instance: Path, storage_url: str = ""):
    from app import create_app
    from config import TestingConfig

    return create_app(TestingConfig({
        "SECRET_KEY": SECRET_KEY,
        "DATABASE_URL": f"sqlite:///{database}",
        # The plain functions are called and nothing should be enqueued; in-memory
        # transports make anything that is enqueued anyway instant instead of a retry loop.
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "CELERY_BROKER_URL": "memory://",
        "CELERY_RESULT_BACKEND": "cache+memory://",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": "1",
        "INSTANCE_PATH": str(instance),
        "EXPORTS_DIR": str(instance / "exports"),
        # The store's endpoint and credentials come from boto3's AWS_* variables.
        "EXPORTS_STORAGE_URL": storage_url,
    }))


def child_seed(database: Path, instance: Path, count: int) -> dict:
    import sqlalchemy as sa

    from app.cli import seed_posts
    from app.extensions import db
    from app.models import User, utcnow

    app = child_app(database, instance)
    with app.app_context():
        db.create_all()
        # Core inserts: the users are only owners of posts, so no ORM events (a welcome
        # email and the like) are wanted.
        users = User.__table__
        for username in (USERNAME, "other"):
            db.session.execute(sa.insert(users).values(username=username, email=f"{username}@example.com",
                                                       created=utcnow()))
        db.session.commit()
        user, other = (db.session.scalar(sa.select(User).where(User.username == name))
                       for name in (USERNAME, "other"))
        began = time.perf_counter()
        # Interleaved in time with the user's newest posts: the export's WHERE and its
        # index have something to leave out.
        seed_posts(other, OTHER_POSTS)
        inserted = seed_posts(user, count)
        seconds = time.perf_counter() - began
        with db.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        result = {"user_id": user.id, "inserted": inserted, "seconds": seconds}
        db.session.remove()
        db.engine.dispose()
    return result


def run_ours(user_id: int, name: str) -> tuple[int, dict]:
    from uuid import uuid4

    import sqlalchemy as sa

    from app.exports import EXPORT_TASK_NAME, ProgressReporter, write_posts_export
    from app.extensions import db
    from app.models import Task, TaskState, utcnow

    # A crashed earlier run may have left a task "running": one per user is allowed.
    db.session.execute(sa.delete(Task).where(Task.user_id == user_id))
    task = Task(id=str(uuid4()), name=EXPORT_TASK_NAME, description="Exporting posts (benchmark)",
                user_id=user_id, state=TaskState.STARTED)
    db.session.add(task)
    db.session.commit()
    task_id = task.id
    reporter = ProgressReporter(task_id)
    db.session.expunge_all()

    began = time.perf_counter()
    count = write_posts_export(user_id, name, reporter)  # to the app's export storage
    seconds = time.perf_counter() - began

    db.session.rollback()
    task = db.session.get(Task, task_id)
    if task.progress != 100:
        raise AssertionError(f"the Task row ended at {task.progress}% instead of 100%")
    task.state, task.finished = TaskState.SUCCESS, utcnow()  # so that the next run may start one
    db.session.commit()
    return count, {"seconds": seconds, "progress_reports": reporter.reports}


def run_naive(user_id: int, destination: Path, indent: int | None = None) -> tuple[int, dict]:
    """The tutorial's export: ORM objects for every post, one list, one json.dumps."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import Post, User

    began = time.perf_counter()
    user = db.session.get(User, user_id)
    total_posts = db.session.scalar(
        sa.select(sa.func.count()).select_from(user.posts.select().subquery())
    )
    data = []
    for post in db.session.scalars(user.posts.select().order_by(Post.timestamp.asc())):
        data.append({"body": post.body, "timestamp": post.timestamp.isoformat() + "Z"})
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "w", encoding="utf-8") as out:
        out.write(json.dumps({"posts": data}, indent=indent))
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - began
    if total_posts != len(data):
        raise AssertionError(f"counted {total_posts} posts but exported {len(data)}")
    return len(data), {"seconds": seconds}


def check_export(storage, name: str, expected: int) -> dict:
    """The file is valid JSON with ``expected`` posts, bodies in order: Post 1 .. Post N."""
    with storage.open_reader(name) as source:
        posts = json.load(source)["posts"]
    if len(posts) != expected:
        raise AssertionError(f"{name}: {len(posts)} posts in the file, expected {expected}")
    for n, post in enumerate(posts, start=1):
        if post["body"] != f"Post {n} by {USERNAME}":
            raise AssertionError(f"{name}: post {n} is {post!r}, out of order or not the user's")
    return {
        "file_bytes": storage.size(name),
        # Compared across the two sides by the parent (seconds precision, without the zone).
        "first_timestamp": posts[0]["timestamp"][:19] if posts else None,
        "last_timestamp": posts[-1]["timestamp"][:19] if posts else None,
    }


def child_measure(side: str, database: Path, instance: Path, user_id: int, expected: int,
                  naive_indent: int | None = None, storage_url: str = "") -> dict:
    from app.storage import LocalStorage, export_storage

    app = child_app(database, instance, storage_url if side == "s3" else "")
    name = f"posts-{side}-{os.getpid()}.json"
    with app.app_context():
        from app.extensions import db

        db.session.execute(db.select(1))  # the pool's first connection, as in a running worker
        storage = export_storage()
        storage.exists(name)  # the store's client built and its first request made, as in a running worker
        baseline = high_water_rss_bytes()
        if side == "naive":
            storage = LocalStorage(instance / "exports")
            count, result = run_naive(user_id, storage.path(name), naive_indent)
        else:
            count, result = run_ours(user_id, name)
        peak = high_water_rss_bytes()
        db.session.remove()
        if count != expected:
            raise AssertionError(f"{side} exported {count} posts, expected {expected}")
        try:
            result.update(check_export(storage, name, expected))
        finally:
            storage.delete(name)
    result.update(side=side, posts=count, baseline_bytes=baseline, peak_bytes=peak)
    return result


def child_main(args: argparse.Namespace) -> None:
    database, instance = Path(args.database), Path(args.instance)
    if args.child == "seed":
        result = child_seed(database, instance, args.count)
    else:
        result = child_measure(args.child, database, instance, args.user_id, args.count, args.naive_indent,
                               args.storage_url or "")
    print(json.dumps(result), flush=True)


# --- the parent ------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def run_child(*arguments: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASK_SKIP_DOTENV": "1", "PYTHONHASHSEED": "0"}
    env.pop("MICROBLOG_CONFIG", None)
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    try:
        process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(arguments)}: no answer in {CHILD_TIMEOUT}s\n{exc.stderr or ''}") from None
    if process.returncode != 0:
        raise BenchError(f"{' '.join(arguments)} failed with exit status {process.returncode}:\n"
                         f"{process.stderr}{process.stdout}")
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"{' '.join(arguments)} printed no result:\n{process.stdout}{process.stderr}")
    return json.loads(lines[-1])


@dataclass
class Row:
    posts: int
    ours: list[dict]
    naive: list[dict]
    s3: list[dict]

    @staticmethod
    def best(runs: list[dict], key: str) -> float:
        return min(run[key] for run in runs)

    @property
    def ours_seconds(self) -> float:
        return self.best(self.ours, "seconds")

    @property
    def naive_seconds(self) -> float:
        return self.best(self.naive, "seconds")

    @property
    def ours_peak_mb(self) -> float:
        return self.best(self.ours, "peak_bytes") / MB

    @property
    def naive_peak_mb(self) -> float:
        return self.best(self.naive, "peak_bytes") / MB

    @staticmethod
    def best_growth_mb(runs: list[dict]) -> float:
        return min(run["peak_bytes"] - run["baseline_bytes"] for run in runs) / MB

    @property
    def ours_growth_mb(self) -> float:
        return self.best_growth_mb(self.ours)

    @property
    def naive_growth_mb(self) -> float:
        return self.best_growth_mb(self.naive)

    @property
    def s3_seconds(self) -> float:
        return self.best(self.s3, "seconds")

    @property
    def s3_peak_mb(self) -> float:
        return self.best(self.s3, "peak_bytes") / MB

    @property
    def s3_growth_mb(self) -> float:
        return self.best_growth_mb(self.s3)


def measure_size(size: int, workdir: Path, repeat: int, reuse: bool, naive_indent: int | None,
                 storage_url: str) -> Row:
    database = workdir / f"posts-{size}.db"
    instance = workdir / f"instance-{size}"
    info = workdir / f"posts-{size}.json"
    if reuse and database.exists() and info.exists():
        seeded = json.loads(info.read_text())
        print(f"  {size:>9} posts: reusing {database}", flush=True)
    else:
        for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            stale.unlink(missing_ok=True)
        seeded = run_child("--child", "seed", "--database", str(database), "--instance", str(instance),
                           "--count", str(size))
        if seeded["inserted"] != size:
            raise BenchError(f"seeding inserted {seeded['inserted']} posts, expected {size}")
        info.write_text(json.dumps(seeded))
        print(f"  {size:>9} posts: seeded in {seeded['seconds']:.1f}s", flush=True)
    row = Row(size, [], [], [])
    common = ("--database", str(database), "--instance", str(instance),
              "--user-id", str(seeded["user_id"]), "--count", str(size))
    sides = ("ours", "naive", "s3") if storage_url else ("ours", "naive")
    for round_number in range(repeat):
        turn = round_number % len(sides)
        for side in sides[turn:] + sides[:turn]:
            extra = ("--naive-indent", str(naive_indent)) if side == "naive" and naive_indent is not None else ()
            if side == "s3":
                extra = ("--storage-url", storage_url)
            result = run_child("--child", side, *common, *extra)
            getattr(row, side).append(result)
            print(f"  {size:>9} posts: {side:<5} {result['seconds']:8.3f}s  "
                  f"peak {result['peak_bytes'] / MB:8.1f} MB "
                  f"(+{(result['peak_bytes'] - result['baseline_bytes']) / MB:.1f})", flush=True)
    ours, naive = row.ours[0], row.naive[0]
    for key in ("first_timestamp", "last_timestamp"):
        if ours[key] != naive[key]:
            raise BenchError(f"{size} posts: the two exports disagree on the {key.replace('_', ' ')}: "
                             f"ours {ours[key]!r}, naive {naive[key]!r}")
    if row.s3 and (row.s3[0]["file_bytes"], row.s3[0]["last_timestamp"]) != (ours["file_bytes"],
                                                                             ours["last_timestamp"]):
        raise BenchError(f"{size} posts: the file in the store is not the file on disk: "
                         f"{row.s3[0]['file_bytes']} bytes, {ours['file_bytes']} on disk")
    return row


def print_table(rows: list[Row]) -> None:
    print()
    print(f"{'posts':>9} {'ours s':>9} {'naive s':>9} {'time x':>8} "
          f"{'ours MB':>9} {'naive MB':>9} {'mem x':>8} {'ours +MB':>9} {'naive +MB':>10}")
    for row in rows:
        print(f"{row.posts:>9} {row.ours_seconds:>9.3f} {row.naive_seconds:>9.3f} "
              f"{row.naive_seconds / row.ours_seconds:>7.1f}x "
              f"{row.ours_peak_mb:>9.1f} {row.naive_peak_mb:>9.1f} "
              f"{row.naive_peak_mb / row.ours_peak_mb:>7.1f}x "
              f"{row.ours_growth_mb:>9.1f} {row.naive_growth_mb:>10.1f}")
    print()
    print("time x / mem x: naive divided by ours (higher is better for ours). MB: peak resident set")
    print("size of the whole process (Python, Flask, SQLAlchemy, Celery included); +MB: the peak's")
    print("growth over the process's own high-water mark just before the export started.")
    if not rows[0].s3:
        return
    print()
    print("s3: ours streamed to the S3-compatible server by multipart upload (8 MiB parts)")
    print(f"{'posts':>9} {'s3 s':>9} {'ours s':>9} {'s3/ours':>8} {'s3 MB':>9} {'s3 +MB':>9}")
    for row in rows:
        print(f"{row.posts:>9} {row.s3_seconds:>9.3f} {row.ours_seconds:>9.3f} "
              f"{row.s3_seconds / row.ours_seconds:>7.1f}x {row.s3_peak_mb:>9.1f} {row.s3_growth_mb:>9.1f}")


def print_targets(rows: list[Row]) -> None:
    by_size = {row.posts: row for row in rows}
    print()
    print("targets (from the issue)")
    big = by_size.get(TARGET_SIZE)
    if big is None:
        print(f"  time and memory at {TARGET_SIZE} posts: not measured (use the default sizes)")
    else:
        ratio = big.naive_seconds / big.ours_seconds
        verdict = "PASS" if big.ours_seconds * TARGET_TIME_FRACTION <= big.naive_seconds else "MISS"
        print(f"  {TARGET_SIZE} posts, time <= 1/{TARGET_TIME_FRACTION} of naive: "
              f"ours {big.ours_seconds:.2f}s vs naive {big.naive_seconds:.2f}s ({ratio:.1f}x)  {verdict}")
        ratio = big.naive_peak_mb / big.ours_peak_mb
        verdict = "PASS" if big.ours_peak_mb * TARGET_MEMORY_FRACTION <= big.naive_peak_mb else "MISS"
        print(f"  {TARGET_SIZE} posts, peak memory <= 1/{TARGET_MEMORY_FRACTION} of naive: "
              f"ours {big.ours_peak_mb:.1f} MB vs naive {big.naive_peak_mb:.1f} MB ({ratio:.1f}x)  {verdict}")
    small = by_size.get(GROWTH_FROM)
    if big is None or small is None:
        print(f"  peak memory growth {GROWTH_FROM} -> {TARGET_SIZE} posts: not measured (use the default sizes)")
    else:
        growth = big.ours_peak_mb - small.ours_peak_mb
        verdict = "PASS" if growth < TARGET_GROWTH_MB else "MISS"
        print(f"  peak memory growth {GROWTH_FROM} -> {TARGET_SIZE} posts < {TARGET_GROWTH_MB} MB: "
              f"ours {growth:+.1f} MB ({small.ours_peak_mb:.1f} -> {big.ours_peak_mb:.1f})  {verdict}")
        if big.s3:
            growth = big.s3_peak_mb - small.s3_peak_mb
            verdict = "PASS" if growth < TARGET_GROWTH_MB else "MISS"
            print(f"  peak memory growth {GROWTH_FROM} -> {TARGET_SIZE} posts < {TARGET_GROWTH_MB} MB: "
                  f"s3 {growth:+.1f} MB ({small.s3_peak_mb:.1f} -> {big.s3_peak_mb:.1f})  {verdict}")


def start_s3_server(workdir: Path):
    """moto's S3 server, as the tests start it, with a bucket for this run; the children
    reach it through boto3's AWS_* variables, set here for them to inherit."""
    from tests.support.s3 import S3Server

    server = S3Server(workdir / "moto.log").start()
    os.environ.update(server.environ())
    bucket = server.new_bucket()
    print(f"s3 side: moto's server at {server.endpoint_url}, bucket {bucket}", flush=True)
    return server, f"s3://{bucket}/exports"


def load_average() -> str:
    """The 1-minute load average, with a warning when other work competes for the CPUs."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load average unknown"
    busy = load > 0.5 * (os.cpu_count() or 1)
    return f"load average {load:.2f}" + (" (busy machine: expect noisy times)" if busy else "")


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, found {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive, found {text!r}")
    return tuple(sorted(set(sizes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES,
                        help="comma-separated post counts (default: 10000,100000,1000000)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: sizes {','.join(map(str, QUICK_SIZES))} (overrides --sizes)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side and size; the best is kept")
    parser.add_argument("--workdir", type=Path,
                        help="keep the seeded databases here and reuse them on the next run; empty it "
                             "after a schema change (default: a temporary directory, removed at the end)")
    parser.add_argument("--no-s3", action="store_true",
                        help="leave out the s3 side (it needs moto, from requirements-dev.txt)")
    parser.add_argument("--naive-indent", type=int, metavar="N",
                        help="json.dumps(..., indent=N) on the naive side, as the tutorial writes it "
                             "(default: no indent, the faster C encoder)")
    # Internal: what a child process does.
    parser.add_argument("--child", choices=("seed", "ours", "naive", "s3"), help=argparse.SUPPRESS)
    parser.add_argument("--storage-url", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--instance", help=argparse.SUPPRESS)
    parser.add_argument("--user-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    sizes = QUICK_SIZES if args.quick else args.sizes

    print(f"export scaling: sizes {', '.join(map(str, sizes))}; best of {args.repeat}; "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; "
          f"{load_average()}", flush=True)
    if args.naive_indent is not None:
        print(f"naive side: json.dumps(..., indent={args.naive_indent})", flush=True)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir, cleanup = args.workdir.resolve(), False
    else:
        workdir, cleanup = Path(tempfile.mkdtemp(prefix="export-scaling-")), True
    began = time.perf_counter()
    s3_server = None
    try:
        storage_url = ""
        if not args.no_s3:
            s3_server, storage_url = start_s3_server(workdir)
        rows = [measure_size(size, workdir, args.repeat, reuse=not cleanup, naive_indent=args.naive_indent,
                             storage_url=storage_url)
                for size in sizes]
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if s3_server is not None:
            s3_server.stop()
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    print_targets(rows)
    print(f"\n(total {time.perf_counter() - began:.0f}s; {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
