"""Start and stop the real processes the integration tests talk to."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from config import redis_socket_url
from devservers.processes import die_with_parent
from devservers.redis_server import start_redis, stop_redis
from devservers.workers import CeleryBeat, CeleryWorker, unique_hostname

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def process_environ(environ: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment of a CLI, worker or web server process on ``environ``'s settings
    (Celery itself reads CELERY_BROKER_URL and CELERY_RESULT_BACKEND from it)."""
    return {**os.environ, **environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1", **extra}


def flask_db(environ: Mapping[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``flask --app celery_worker:app db ARGS`` as an operator runs it."""
    result = subprocess.run([str(BIN / "flask"), "--app", "celery_worker:app", "db", *args],
                            cwd=ROOT, env=process_environ(environ), capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, f"flask db {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


#: SIGKILL a child when the test process dies, however it dies (Linux).
_die_with_parent = die_with_parent()


#: Logical databases of the embedded Redis: one per test stack, handed out by
#: :meth:`RedisService.fresh_db` (a dozen stacks today).
EMBEDDED_DATABASES = 32
#: What an external ``REDIS_URL`` is assumed to have when ``CONFIG GET`` is refused.
EXTERNAL_DEFAULT_DATABASES = 16


#: Where the ``limits`` package (Flask-Limiter) keeps its counters, next to the queues.
RATE_LIMIT_KEYS = b"LIMITS:"


def queued_and_unacked(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each non-empty queue of a Redis broker database, and those
    delivered but not acknowledged (kombu's ``unacked``); rate-limit counters are not queues."""
    waiting = {key.decode(): client.llen(key) for key in client.keys("*")
               if client.type(key) == b"list" and not key.startswith(RATE_LIMIT_KEYS)}
    return {**{k: n for k, n in waiting.items() if n}, "unacked": client.hlen("unacked")}


class RedisService:
    """A real Redis: the embedded redis-server on a unix socket, or ``REDIS_URL`` when set.

    Each stack of the tests (the live worker, the in-process unit apps, each module's own
    worker...) takes a logical database of its own from :meth:`fresh_db`, so no two share a
    queue: a worker would otherwise run another stack's tasks against its own database.
    """

    def __init__(self, directory: Path) -> None:
        self.process: subprocess.Popen | None = None
        self._next_db = 0
        external = os.environ.get("REDIS_URL")
        if external:
            self.url = external
            self.databases = self._configured_databases()
            return
        self.socket_path = directory / "redis.sock"
        self.directory = directory
        self.process = start_redis(self.socket_path, directory, persist=False, databases=EMBEDDED_DATABASES,
                                   log_path=directory / "redis.log", preexec_fn=_die_with_parent)
        self.url = redis_socket_url(self.socket_path)
        self.databases = EMBEDDED_DATABASES

    def _configured_databases(self) -> int:
        """The external server's ``databases`` setting; 16 (Redis's default) if it will not say."""
        try:
            return int(self.client().config_get("databases")["databases"])
        except (redis.ResponseError, KeyError, ValueError):  # CONFIG disabled, as on managed Redis
            return EXTERNAL_DEFAULT_DATABASES

    def fresh_db(self) -> int:
        """The number of a logical database no stack has had yet, emptied."""
        if self._next_db >= self.databases:
            where = (f"the external REDIS_URL ({self.url}) has `databases` {self.databases}: raise it there"
                     if self.process is None else
                     f"the embedded redis-server has EMBEDDED_DATABASES = {self.databases} "
                     f"(tests/support/services.py): raise it")
            raise RuntimeError(f"no fresh Redis logical database left: all {self.databases} are handed out; "
                               f"{where}")
        number = self._next_db
        self._next_db += 1
        self.client(number).flushdb()
        return number

    def url_for_db(self, number: int) -> str:
        """The Celery URL of logical database ``number`` (from :meth:`fresh_db`)."""
        if self.process is None:
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(self.url)
            return urlunsplit(parts._replace(path=f"/{number}"))
        return f"{self.url}?virtual_host={number}"

    def client(self, db: int = 0) -> redis.Redis:
        if self.process is None:
            return redis.Redis.from_url(self.url_for_db(db).replace("redis+socket", "unix"))
        return redis.Redis(unix_socket_path=str(self.socket_path), db=db)

    def stop(self) -> None:
        stop_redis(self.process)


#: What every test worker and beat runs.
CELERY_APP = "celery_worker.celery"


class WorkerProcess(CeleryWorker):
    """``celery -A celery_worker.celery worker -l info`` as a user runs it, under a hostname
    of its own, in its own process group, SIGKILLed if the test process dies.

    The options are :class:`devservers.workers.CeleryWorker`'s (``concurrency``,
    ``queues``, ``include``, ``events``...); :meth:`start` with the test's Celery app
    returns once the worker answers ping.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, **options) -> None:
        super().__init__(CELERY_APP, env, log_path, hostname=unique_hostname("test"), **options)


class BeatProcess(CeleryBeat):
    """``celery -A celery_worker.celery beat`` with its schedule file in ``directory``,
    waking at least every second."""

    def __init__(self, env: Mapping[str, str], directory: Path) -> None:
        super().__init__(CELERY_APP, env, directory / "beat.log",
                         schedule_path=directory / "celerybeat-schedule", max_interval=1)
        self.start()
