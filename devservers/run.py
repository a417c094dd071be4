"""Run the whole app on one machine: web, worker, and the local Redis and SMTP sink.

``make run`` calls this after installing and migrating. Each process's output is
prefixed with its name (as honcho prints it); one Ctrl-C stops them all.

The web and worker command lines are the ``Procfile``'s, the one place they are written
(read with honcho's parser); they run here with the venv's ``bin`` first on ``PATH``,
``WEB_HOST=127.0.0.1`` (the web server listens on this machine only), and unless set
``PORT=5000``, ``CELERY_WORKER_CONCURRENCY=2`` (Celery's own variable for
``--concurrency``) and ``GUNICORN_CMD_ARGS=--no-control-socket``. Only the embedded
Redis and the SMTP sink, which production does not run, are written here.

Each process runs in its own session, so a Ctrl-C in the terminal reaches only this
runner, which then sends SIGTERM to every process group, and SIGKILL to any still
running :data:`KILL_WAIT` seconds later. SIGTERM and SIGHUP (the terminal closing) do
the same; a second signal kills at once. A signal at any moment, even while the
processes are being started, stops everything, and so does any one process exiting.

This is a small supervisor rather than ``honcho.manager.Manager``: honcho forks a helper
per process that inherits the manager's signal handler until after it has started its
command, so a Ctrl-C during start-up could leave the runner hung and processes behind;
and honcho does not handle SIGHUP, so closing the terminal would leave every process running.
"""
from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from honcho.colour import get_colours
from honcho.environ import parse_procfile
from honcho.printer import Message, Printer

#: Seconds between SIGTERM and SIGKILL for processes that do not stop.
KILL_WAIT = 5.0
#: The signals that stop everything, and the exit status each gives (128 + number).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SYSTEM = "system"
#: Where the web and worker command lines are written, for production and for this runner.
PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"
#: The Procfile's processes this runner starts, in this order.
PROCFILE_PROCESSES = ("worker", "web")
#: The address the web server binds here (the Procfile's ``${WEB_HOST:-0.0.0.0}``): this
#: machine only, whatever the environment says.
WEB_HOST = "127.0.0.1"
#: Unless the environment sets them: the port, the worker's pool size, and no gunicorn
#: control socket (it would be made in ~/.gunicorn, shared by every gunicorn of the user).
DEFAULTS = {"PORT": "5000", "CELERY_WORKER_CONCURRENCY": "2", "GUNICORN_CMD_ARGS": "--no-control-socket"}


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    """The Procfile's web and worker command lines, by name."""
    found = parse_procfile(path.read_text()).processes
    missing = [name for name in PROCFILE_PROCESSES if name not in found]
    if missing:
        raise SystemExit(f"{path} has no {' or '.join(missing)} line")
    return {name: found[name] for name in PROCFILE_PROCESSES}


def run_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of every process: ``environ`` with the venv's ``bin`` first on
    ``PATH`` (the Procfile names bare ``gunicorn`` and ``celery``), the web server on
    127.0.0.1, and the :data:`DEFAULTS` where unset."""
    result = {**environ, "WEB_HOST": WEB_HOST}
    for name, value in {**DEFAULTS, "PYTHONUNBUFFERED": "1"}.items():
        if not result.get(name):
            result[name] = value
    bindir = os.path.dirname(sys.executable)
    path = result.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        result["PATH"] = os.pathsep.join([bindir, path]) if path else bindir
    return result


def processes(environ: Mapping[str, str], procfile: Path = PROCFILE) -> dict[str, str]:
    """The commands to run: the embedded services only where nothing external is set,
    then the Procfile's worker and web lines."""
    python = shlex.quote(sys.executable)
    commands: dict[str, str] = {}
    if not (environ.get("REDIS_URL") or environ.get("CELERY_BROKER_URL")):
        commands["redis"] = f"exec {python} -m devservers.redis_server"
    if not environ.get("MAIL_SERVER"):
        commands["mail"] = f"exec {python} -u -m devservers.smtp_sink"
    for name, command in procfile_commands(procfile).items():
        commands[name] = f"exec {command}"  # the shell's process becomes the command's
    return commands


class Supervisor:
    """Start shell commands, print their output prefixed, stop them all together.

    Signal handlers only record the signal; :meth:`loop` acts on it, so a signal is
    handled the same way whenever it arrives.
    """

    def __init__(self, printer: Printer | None = None, kill_wait: float = KILL_WAIT) -> None:
        self.printer = printer if printer is not None else Printer(sys.stdout)
        self.printer.width = max(self.printer.width, len(SYSTEM))
        self.kill_wait = kill_wait
        self.returncode: int | None = None
        self._commands: dict[str, tuple[str, Mapping[str, str] | None, str]] = {}
        self._children: dict[str, subprocess.Popen] = {}
        self._stopped: dict[str, int] = {}
        self._events: queue.Queue = queue.Queue()
        self._signals: list[int] = []
        self._colours = get_colours()
        self._terminating_since: float | None = None
        self._killed = False

    def add_process(self, name: str, command: str, env: Mapping[str, str] | None = None) -> None:
        assert name not in self._commands, "process names must be unique"
        self._commands[name] = (command, env, next(self._colours))
        self.printer.width = max(self.printer.width, len(name))

    def install_signal_handlers(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)

    def loop(self) -> int:
        """Start every process, relay output until all have stopped; the exit status."""
        self.install_signal_handlers()
        try:
            for name in self._commands:
                if self._signals:
                    break  # stopping already: start nothing more
                self._start(name)
            while len(self._stopped) < len(self._children) or self._signals:
                self._handle_signals()
                try:
                    kind, name, data = self._events.get(timeout=0.1)
                except queue.Empty:
                    pass
                else:
                    if kind == "line":
                        self._write(name, data)
                    else:
                        self._stopped[name] = data
                        self._print(f"{name} stopped (rc={data})")
                        if self.returncode is None:
                            self.returncode = data
                        self._terminate()  # one process gone: stop the others
                if (self._terminating_since is not None and not self._killed
                        and time.monotonic() - self._terminating_since > self.kill_wait):
                    self._kill()
        finally:
            self._stop_leftovers()  # only does something if the loop did not finish
        return self.returncode or 0

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            self._print(f"{signal.Signals(signum).name} received")
            if self.returncode is None:
                self.returncode = 128 + signum
            if self._terminating_since is None:
                self._terminate()
            elif not self._killed:
                self._kill()  # a second Ctrl-C: do not wait

    def _start(self, name: str) -> None:
        command, env, colour = self._commands[name]
        child = subprocess.Popen(
            command, shell=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._children[name] = child
        self._print(f"{name} started (pid={child.pid})")
        threading.Thread(target=self._relay, args=(name, child), name=f"relay-{name}", daemon=True).start()

    def _relay(self, name: str, child: subprocess.Popen) -> None:
        for line in iter(child.stdout.readline, b""):
            self._events.put(("line", name, line))
        child.stdout.close()
        self._events.put(("stop", name, child.wait()))

    def _running(self) -> list[tuple[str, subprocess.Popen]]:
        return [(name, child) for name, child in self._children.items() if name not in self._stopped]

    def _terminate(self) -> None:
        if self._terminating_since is not None:
            return
        self._terminating_since = time.monotonic()
        self._signal_all(signal.SIGTERM)

    def _kill(self) -> None:
        self._killed = True
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int, quiet: bool = False) -> None:
        for name, child in self._running():
            if not quiet:
                self._print(f"sending {signal.Signals(signum).name} to {name} (pid {child.pid})")
            try:
                os.killpg(child.pid, signum)  # the process and anything it started
            except (ProcessLookupError, PermissionError):
                pass

    def _stop_leftovers(self) -> None:
        """After an error in the loop (say stdout closed): stop every process, silently."""
        if not self._running():
            return
        self._signal_all(signal.SIGTERM, quiet=True)
        deadline = time.monotonic() + self.kill_wait
        while time.monotonic() < deadline and any(child.poll() is None for _, child in self._running()):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL, quiet=True)

    def _write(self, name: str, data: bytes | str) -> None:
        colour = self._commands[name][2] if name in self._commands else None
        self.printer.write(Message(type="line", data=data, time=datetime.now(), name=name, colour=colour))

    def _print(self, text: str) -> None:
        self._write(SYSTEM, text + "\n")


def main() -> int:
    supervisor = Supervisor()
    supervisor.install_signal_handlers()  # before the slow imports: a Ctrl-C now just stops

    from flask.cli import get_load_dotenv, load_dotenv

    if get_load_dotenv():  # FLASK_SKIP_DOTENV=1 skips .env/.flaskenv, as in the Flask CLI
        load_dotenv()
    environ = run_environ(os.environ)
    for name, command in processes(environ).items():
        supervisor.add_process(name, command, env=environ)
    return supervisor.loop()


if __name__ == "__main__":
    sys.exit(main())
