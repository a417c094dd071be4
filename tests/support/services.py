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
from devservers.processes import die_with_parent, stop_process_group
from devservers.redis_server import start_redis, stop_redis

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


class RedisService:
    """A real Redis: the embedded redis-server on a unix socket, or ``REDIS_URL`` when set."""

    def __init__(self, directory: Path) -> None:
        self.process: subprocess.Popen | None = None
        external = os.environ.get("REDIS_URL")
        if external:
            self.url = external
            self._client_kwargs = {"url": external}
            return
        self.socket_path = directory / "redis.sock"
        self.directory = directory
        self.process = start_redis(self.socket_path, directory, persist=False, log_path=directory / "redis.log",
                                   preexec_fn=_die_with_parent)
        self.url = redis_socket_url(self.socket_path)

    def url_for_db(self, number: int) -> str:
        """The Celery URL of logical database ``number`` (each test stack gets its own)."""
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


class WorkerProcess:
    """``celery -A celery_worker.celery worker`` as a user runs it, in its own process group."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *extra_args: str) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def start(self, celery_app, timeout: float = 60.0) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.hostname = f"test-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "celery_worker.celery", "worker", "-l", "info",
             "-n", self.hostname, "--without-gossip", "--without-mingle", *self.extra_args],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

        def answers_ping() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            return bool(celery_app.control.ping(destination=[self.hostname], timeout=0.5))

        try:
            wait_until(answers_ping, timeout, message=f"worker {self.hostname} to answer ping")
        except BaseException:
            self.stop()  # never leave a worker behind to reconnect to a later Redis
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout)


class BeatProcess:
    """``celery -A celery_worker.celery beat`` with its schedule file in ``directory``."""

    def __init__(self, env: Mapping[str, str], directory: Path) -> None:
        self.log_path = directory / "beat.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "celery_worker.celery", "beat", "-l", "info",
             "-s", str(directory / "celerybeat-schedule"), "--pidfile=", "--max-interval", "1"],
            cwd=ROOT, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        try:
            stop_process_group(self.process, timeout)
        finally:
            self._log.close()
