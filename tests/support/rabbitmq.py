"""A real RabbitMQ server (the Debian ``rabbitmq-server`` package) started by the tests.

Everything is private to one test run: its own epmd on a free port of 127.0.0.1 (so a
system epmd or another run's is never touched), the AMQP and Erlang distribution
listeners on free ports of 127.0.0.1, and a temporary directory with the node's data,
logs, config, enabled-plugins file (none), definitions and Erlang cookie (in a private
HOME). The definitions create a user with a random password and the virtual hosts a
test asks for; the default ``guest`` user is not created.

The Debian ``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user and
the system's directories, so the script it wraps is run directly instead.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import amqp

from devservers.processes import die_with_parent, stop_process_group
from tests.support.services import wait_until
from tests.support.stacks import free_port

#: Where Debian puts the server's own start script (the one /usr/sbin's wrapper runs).
DEBIAN_SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
INSTALL_HINT = ("the RabbitMQ tests need the rabbitmq-server package (and Erlang's epmd): "
                "`apt-get install rabbitmq-server` on Debian; .ci/run installs it")

_die_with_parent = die_with_parent()
#: What the node or epmd says when one of its ports was taken after free_port() chose it.
_PORT_TAKEN = ("eaddrinuse", "address already in use", "could not bind to distribution port")


class RabbitMQUnavailable(RuntimeError):
    """The server is not installed, or did not come up: the tests must fail, not skip."""


def server_script() -> Path:
    """The rabbitmq-server start script to run as the current user."""
    if DEBIAN_SERVER_SCRIPT.exists():
        return DEBIAN_SERVER_SCRIPT
    found = shutil.which("rabbitmq-server")  # a generic-unix install on PATH
    if found is None:
        raise RabbitMQUnavailable(f"rabbitmq-server not found: {INSTALL_HINT}")
    return Path(found)


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _spawn(args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """A child in its own process group, output to ``log_path``, killed if we die."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _epmd_answers(epmd_binary: str, port: int) -> bool:
    """Whether an epmd (not just anything) listens on ``port``."""
    try:
        names = subprocess.run([epmd_binary, "-port", str(port), "-names"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return names.returncode == 0 and b"up and running" in names.stdout


class RabbitMQServer:
    """One RabbitMQ node on 127.0.0.1 with a user of its own and the given virtual hosts."""

    def __init__(self, directory: Path, vhosts: Sequence[str] = ("microblog",),
                 user: str = "microblog") -> None:
        self.directory = directory
        self.vhosts = tuple(vhosts)
        self.user = user
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.epmd: subprocess.Popen | None = None
        self.process: subprocess.Popen | None = None
        #: Seconds from launching the node to the first successful AMQP login.
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None

    # --- start ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0, attempts: int = 3) -> RabbitMQServer:
        """Start epmd and the node; return once a client can log in to every vhost.

        A free port can be taken by someone else before the node binds it: then the
        start is tried again on new ports. Any other failure raises at once, with the logs."""
        script = server_script()
        epmd_binary = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
        if epmd_binary is None:
            raise RabbitMQUnavailable(f"epmd not found: {INSTALL_HINT}")
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(script, epmd_binary, timeout)
            except _PortTaken:
                log = self.log()
                self.stop()
                if attempt == attempts:
                    raise RabbitMQUnavailable(f"RabbitMQ could not bind its ports {attempts} times:\n{log}")
                self._forget_attempt()
            except AssertionError as exc:  # from wait_until or _alive
                log = self.log()
                self.stop()
                raise RabbitMQUnavailable(f"RabbitMQ did not start ({exc}):\n{log}") from None
        raise AssertionError("unreachable")

    def _start_once(self, script: Path, epmd_binary: str, timeout: float) -> RabbitMQServer:
        epmd_port, self.port, dist_port = free_port(), free_port(), free_port()
        env = self._environment(epmd_port, dist_port)
        self.epmd = _spawn([epmd_binary, "-address", "127.0.0.1", "-port", str(epmd_port)],
                           env, self.directory, self.directory / "epmd.log")
        wait_until(lambda: self._alive(self.epmd, "epmd") and _epmd_answers(epmd_binary, epmd_port), 10,
                   message=f"epmd on 127.0.0.1:{epmd_port}")
        began = time.monotonic()
        self.process = _spawn([str(script)], env, self.directory, self.directory / "server.out")
        wait_until(self._accepts_logins, timeout, interval=0.1,
                   message=f"RabbitMQ to accept AMQP logins on 127.0.0.1:{self.port}")
        self.startup_seconds = time.monotonic() - began
        return self

    def _forget_attempt(self) -> None:
        """Remove a failed attempt's logs and data, so the next one starts afresh."""
        for name in ("server.out", "epmd.log", "log", "mnesia"):
            path = self.directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _environment(self, epmd_port: int, dist_port: int) -> dict[str, str]:
        """The node's settings; nothing is read from /etc/rabbitmq or /var/lib/rabbitmq."""
        home = self.directory / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        for name in ("mnesia", "log"):
            (self.directory / name).mkdir(exist_ok=True)
        definitions = self.directory / "definitions.json"
        definitions.write_text(json.dumps(self._definitions(), indent=1))
        config = self.directory / "rabbitmq.conf"
        config.write_text(
            "log.console = false\n"
            "log.file.level = info\n"
            f"load_definitions = {definitions}\n"
            # The tests write a few MB; do not block publishers on a nearly full disk.
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **inherited,
            "HOME": str(home),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),  # absent
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
            "RABBITMQ_NODENAME": f"microblog-test-{os.getpid()}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _definitions(self) -> dict:
        return {
            "users": [{"name": self.user, "password_hash": password_hash(self.password),
                       "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
            "vhosts": [{"name": vhost} for vhost in self.vhosts],
            "permissions": [
                {"user": self.user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                for vhost in self.vhosts
            ],
        }

    def _alive(self, process: subprocess.Popen, name: str) -> bool:
        if process.poll() is None:
            return True
        log = self.log().lower()
        # epmd exits without a word when its port is taken.
        if process is self.epmd or any(marker in log for marker in _PORT_TAKEN):
            raise _PortTaken()
        raise AssertionError(f"{name} exited with {process.returncode}")

    def _accepts_logins(self) -> bool:
        self._alive(self.process, "rabbitmq-server")
        try:
            for vhost in self.vhosts:
                self.connection(vhost, connect_timeout=1).close()
        except (OSError, amqp.exceptions.AMQPError):
            return False  # not listening yet, or definitions not loaded yet
        return True

    # --- use ------------------------------------------------------------------------

    def url(self, vhost: str = "microblog") -> str:
        """The ``CELERY_BROKER_URL`` of a virtual host: ``amqp://user:password@host:port/vhost``."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def connection(self, vhost: str = "microblog", connect_timeout: float = 5) -> amqp.Connection:
        """A connected py-amqp client (close it) for looking at queues as the broker sees them."""
        connection = amqp.Connection(f"127.0.0.1:{self.port}", userid=self.user, password=self.password,
                                     virtual_host=vhost, connect_timeout=connect_timeout)
        connection.connect()
        return connection

    def log(self) -> str:
        """epmd's and the start script's output and the node's logs (the end of each)."""
        parts = []
        logs = sorted((self.directory / "log").glob("*.log"))
        for path in [self.directory / "epmd.log", self.directory / "server.out", *logs]:
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    # --- stop -----------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the node's process group (RabbitMQ shuts down cleanly on it), then epmd."""
        if self.process is not None:
            began = time.monotonic()
            stop_process_group(self.process, timeout)
            self.stop_seconds = time.monotonic() - began
            self.process = None
        if self.epmd is not None:
            stop_process_group(self.epmd, 5)
            self.epmd = None


class _PortTaken(Exception):
    """The node exited because one of its ports was taken meanwhile."""
