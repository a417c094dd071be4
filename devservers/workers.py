"""Real Celery processes, started as an operator starts them: for the tests and the benchmarks.

    worker = CeleryWorker("celery_worker.celery", env, log_path, hostname="me@localhost",
                          concurrency=1, queues=["exports"])
    worker.start(celery_app)          # returns once the worker answers ping, or raises WorkerError
    ...
    worker.stop()

Each process is ``celery -A <target> worker|beat ...`` run from the repository with the
venv's ``celery``, in a process group of its own (``start_new_session``), so stopping it
(:func:`devservers.processes.stop_process_group`: SIGTERM, a deadline, SIGKILL) reaches
a prefork pool's children too; its output is appended to a log file; on Linux it gets
``parent_death_signal`` if whatever started it dies, however it dies. A worker is ready
once it answers ``control.ping`` addressed to its own hostname.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from devservers.processes import die_with_parent, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).parent / "celery"
#: How much of the log an error message quotes.
LOG_TAIL = 6000


class WorkerError(RuntimeError):
    """A Celery process exited, or a worker did not answer ping in time (with its log's end)."""


def unique_hostname(prefix: str) -> str:
    """A worker hostname no other worker of this machine uses, now or later."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}@localhost"


class CeleryProcess:
    """``celery -A <target> <subcommand> ARGS`` in its own process group, output to ``log_path``."""

    subcommand = ""

    def __init__(self, target: str, env: Mapping[str, str], log_path: Path, args: Iterable[str], *,
                 name: str, parent_death_signal: int | None = signal.SIGKILL) -> None:
        self.target = target
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.name = name
        self.argv = [str(CELERY), "-A", target, self.subcommand, *args]
        self.parent_death_signal = parent_death_signal
        self.process: subprocess.Popen | None = None
        self._stopped = False

    def spawn(self) -> subprocess.Popen:
        """Start the process (once) and return it; its output goes to the log file."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        preexec_fn = die_with_parent(self.parent_death_signal) if self.parent_death_signal else None
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn,
            )
        return self.process

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`WorkerError`, with the log's end, if the process has exited."""
        if self.process is None:
            raise WorkerError(f"{self.name} was never started")
        if self.process.poll() is not None:
            raise WorkerError(f"{self.name} exited with {self.process.returncode}:\n{self.log(LOG_TAIL)}")

    def log(self, tail: int | None = None) -> str:
        """The log so far (its last ``tail`` characters, if given)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if tail is None else text[-tail:]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; safe to repeat."""
        if self.process is not None and not self._stopped:
            stop_process_group(self.process, timeout)
            self._stopped = True  # its group id may belong to someone else from now on


class CeleryWorker(CeleryProcess):
    """``celery -A <target> worker`` under ``hostname``, with the given options.

    ``concurrency``, ``pool``, ``queues``, ``include`` and ``events`` are ``-c``, ``-P``,
    ``-Q``, ``-I`` and ``-E``, left to Celery's defaults when not given; ``without`` names
    the ``--without-*`` switches (gossip and mingle only slow a lone worker's start);
    ``extra_args`` go last, as given.
    """

    subcommand = "worker"

    def __init__(self, target: str, env: Mapping[str, str], log_path: Path, *, hostname: str,
                 concurrency: int | None = None, pool: str | None = None,
                 queues: Iterable[str] | None = None, include: Iterable[str] = (), events: bool = False,
                 loglevel: str = "info", without: Iterable[str] = ("gossip", "mingle"),
                 extra_args: Iterable[str] = (), name: str | None = None,
                 parent_death_signal: int | None = signal.SIGKILL) -> None:
        args = ["-l", loglevel, "-n", hostname]
        if concurrency is not None:
            args += ["-c", str(concurrency)]
        if pool is not None:
            args += ["-P", pool]
        if queues is not None:
            args += ["-Q", ",".join(queues)]
        for module in include:
            args += ["-I", module]
        if events:
            args.append("-E")
        args += [f"--without-{switch}" for switch in without]
        args += list(extra_args)
        super().__init__(target, env, log_path, args, name=name or f"worker {hostname}",
                         parent_death_signal=parent_death_signal)
        self.hostname = hostname

    def start(self, celery_app=None, timeout: float = 60.0):
        """Start the worker; with ``celery_app``, return only once it answers ping (see
        :meth:`wait_ready`)."""
        self.spawn()
        if celery_app is not None:
            self.wait_ready(celery_app, timeout=timeout)
        return self

    def wait_ready(self, celery_app, timeout: float = 60.0, *, deadline: float | None = None) -> None:
        """Until the worker answers ``celery_app.control.ping`` addressed to its hostname, by
        ``deadline`` (a ``time.monotonic()`` value) or within ``timeout`` seconds. If it exits
        or does not answer in time it is stopped (none is left to reconnect to a later
        broker) and :class:`WorkerError` is raised."""
        if deadline is None:
            deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive()
                if celery_app.control.ping(destination=[self.hostname], timeout=0.5):
                    return
                if time.monotonic() > deadline:
                    raise WorkerError(f"{self.name} did not answer ping in time:\n{self.log(LOG_TAIL)}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise


class CeleryBeat(CeleryProcess):
    """``celery -A <target> beat`` with its schedule in ``schedule_path`` and no pidfile."""

    subcommand = "beat"

    def __init__(self, target: str, env: Mapping[str, str], log_path: Path, *, schedule_path: Path,
                 max_interval: float | None = None, loglevel: str = "info", extra_args: Iterable[str] = (),
                 parent_death_signal: int | None = signal.SIGKILL) -> None:
        args = ["-l", loglevel, "-s", str(schedule_path), "--pidfile="]
        if max_interval is not None:
            args += ["--max-interval", f"{max_interval:g}"]
        args += list(extra_args)
        super().__init__(target, env, log_path, args, name=f"beat {target}",
                         parent_death_signal=parent_death_signal)

    def start(self):
        self.spawn()
        return self
