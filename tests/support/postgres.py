"""A real PostgreSQL server for the tests: initdb in a temporary directory, 127.0.0.1 only.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the ``postgres``
OS user that Debian's ``postgresql`` package creates, in a directory owned by that user
(pytest's temporary directories are private to root, so the data lives in /tmp).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from devservers.processes import die_with_parent, stop_process_group
from tests.support.services import wait_until

#: The superuser initdb creates; local TCP connections are trusted (a throwaway server).
SUPERUSER = "microblog"
#: Not UTC on purpose: code that leans on the server's time zone shows up in the tests.
SERVER_TIMEZONE = "America/New_York"
INSTALL_HINT = "install the Debian package `postgresql` (apt-get install postgresql; .ci/run does it)"


def find_bin_dir() -> Path:
    """``POSTGRES_BIN`` if set, else the newest /usr/lib/postgresql/<version>/bin, else PATH."""
    configured = os.environ.get("POSTGRES_BIN")
    if configured:
        candidates = [Path(configured)]
    else:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                          key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
        candidates = versions[::-1]
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    searched = [str(c) for c in candidates] or "/usr/lib/postgresql/*/bin or PATH"
    raise RuntimeError(f"PostgreSQL server binaries (initdb, postgres) not found in {searched}: "
                       f"{INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """``postgres`` on 127.0.0.1 and a free port, its data in a fresh directory, stopped
    with a fast shutdown (and killed with the test process if that dies first)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"PostgreSQL refuses to run as root and there is no `postgres` user "
                                   f"to run it as: {INSTALL_HINT}") from None
            self._run_as = "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="microblog-pg-"))
        if self._run_as:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"

    def _as_server_user(self) -> dict:
        """Popen arguments that drop root to the ``postgres`` user (nothing when not root)."""
        if not self._run_as:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": []}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0, attempts: int = 3) -> PostgresServer:
        """initdb, then start the server and wait until it accepts connections; on
        failure, raise with the server's own words and leave nothing behind."""
        try:
            initdb = subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                cwd=self.directory, capture_output=True, text=True, timeout=120, **self._as_server_user(),
            )
            if initdb.returncode != 0:
                raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}")
            for attempt in range(attempts):  # another process may take the free port first
                try:
                    return self._start_on(_free_port(), timeout)
                except _PortTaken:
                    if attempt == attempts - 1:
                        raise RuntimeError(f"PostgreSQL found no free port:\n{self.log()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _start_on(self, port: int, timeout: float) -> PostgresServer:
        self.port = port
        with open(self.log_path, "wb") as log:  # this attempt's log only
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                 "-p", str(port), "-k", str(self.directory),
                 # A throwaway server: durability buys nothing here and costs seconds.
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", f"timezone={SERVER_TIMEZONE}", "-c", "max_connections=200"],
                cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGQUIT), **self._as_server_user(),
            )

        def accepts_connections() -> bool:
            if self.process.poll() is not None:
                if "could not bind" in self.log() or "already in use" in self.log():
                    raise _PortTaken()
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log()}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        try:
            wait_until(accepts_connections, timeout, interval=0.1,
                       message=f"PostgreSQL on 127.0.0.1:{port} to accept connections")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log()}") from None
        return self

    def dsn(self, database: str) -> str:
        """A libpq connection string for psycopg itself."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL the app takes as ``DATABASE_URL``."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its ``DATABASE_URL``."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def connect(self, database: str, **kwargs) -> psycopg.Connection:
        """A plain psycopg connection, for looking at the server from outside the app."""
        return psycopg.connect(self.dsn(database), **kwargs)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: open sessions are ended), then remove the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            stop_process_group(self.process, 5)
        shutil.rmtree(self.directory, ignore_errors=True)


class _PortTaken(Exception):
    pass
