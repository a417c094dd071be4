"""End to end: what ``make run`` starts (``flask db upgrade`` then ``python -m devservers.run``).

The embedded Redis (on ``<instance>/redis.sock``), the SMTP sink, and the Procfile's
Celery worker and web server (gunicorn, on 127.0.0.1 only) come up; a user registers,
logs in and pings the worker over real HTTP; then one Ctrl-C (SIGINT) stops all of it and
leaves no process behind. So do SIGTERM, SIGHUP (the terminal closing) and a Ctrl-C while
the processes are still starting.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

from devservers.run import PROCFILE, processes, run_environ
from tests.conftest import csrf_token_in
from tests.support.services import BIN, ROOT, wait_until

MARKER_VARIABLE = "MICROBLOG_RUN_MARKER"
STARTUP_TIMEOUT = 90.0
SHUTDOWN_TIMEOUT = 20.0
#: Settings that would point the app at external services or another database/config;
#: without them ``devservers.run`` starts its own Redis and SMTP sink.
UNSET = (
    "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MAIL_SERVER", "MAIL_SINK_DIR",
    "DATABASE_URL", "MICROBLOG_CONFIG", "EXPORTS_DIR", "TRUSTED_HOSTS", "SERVER_NAME",
    "APPLICATION_ROOT", "FLASK_APP", "FLASK_DEBUG", "PYTHONUNBUFFERED",
)
#: A line each process prints once it is ready, after the "HH:MM:SS name | " prefix.
READY_LINES = {
    "redis": "ready to accept connections",
    "mail": "SMTP sink on 127.0.0.1:",
    "worker": " ready.",
    "web": "Listening at: http://127.0.0.1:",
}
PROGRAMS = ("devservers.run", "redis-server", "devservers.smtp_sink", "bin/celery", "bin/gunicorn")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cmdline(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def describe(pids: list[int]) -> str:
    return "\n".join(f"  {pid}: {cmdline(pid)}" for pid in pids)


def prefixed_lines(log: str, name: str) -> list[str]:
    """The lines the runner printed for process ``name`` (without the time and name prefix)."""
    pattern = re.compile(rf"^\d\d:\d\d:\d\d {re.escape(name)}\s*\| (.*)$", re.MULTILINE)
    return pattern.findall(log)


class Run:
    """One ``python -m devservers.run`` in a fresh instance folder, and every process it starts."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="mbrun"))  # short: redis.sock must fit
        self.instance = self.directory / "instance"
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.mail_port = free_port()
        while self.mail_port == self.port:
            self.mail_port = free_port()
        self.env = {key: value for key, value in os.environ.items() if key not in UNSET}
        self.env.update({
            "INSTANCE_PATH": str(self.instance),
            "PORT": str(self.port),
            "MAIL_PORT": str(self.mail_port),
            "SECRET_KEY": "run-test-secret-key-" + uuid.uuid4().hex,
            "FLASK_SKIP_DOTENV": "1",
            MARKER_VARIABLE: self.marker,
        })
        self.log_path = self.directory / "run.log"
        self.runner: subprocess.Popen | None = None

    def migrate(self) -> None:
        """``flask db upgrade``, as ``make run`` does first."""
        migrate = subprocess.run(
            [str(BIN / "flask"), "--app", "celery_worker:app", "db", "upgrade"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert (self.instance / "microblog.db").exists()

    def start(self) -> None:
        with open(self.log_path, "wb") as log_file:
            self.runner = subprocess.Popen(
                [str(BIN / "python"), "-m", "devservers.run"],
                cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """Every live process of this run: its environment carries the marker, or its
        working directory or command line is inside the run's directory.

        The environment alone is not enough: redis-server rewrites its process title over
        the memory /proc/<pid>/environ shows, so its marker disappears; but it runs in the
        instance folder (``--dir``) and names its socket there.
        """
        needle = f"{MARKER_VARIABLE}={self.marker}".encode()
        inside = str(self.directory).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            proc = Path("/proc", entry)
            try:
                if (needle in (proc / "environ").read_bytes().split(b"\0")
                        or os.readlink(proc / "cwd").encode().startswith(inside)
                        or inside in (proc / "cmdline").read_bytes()):
                    found.append(int(entry))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2) -> None:
        """``wait_until`` that fails at once if the runner exits, with the log in the message."""
        def check():
            if self.runner.poll() is not None:
                raise AssertionError(f"devservers.run exited with {self.runner.returncode}:\n{self.log()}")
            return predicate()

        try:
            wait_until(check, timeout, interval, message=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.log()}") from None

    def wait_ready(self) -> None:
        def all_ready() -> bool:
            text = self.log()
            return all(any(ready in line for line in prefixed_lines(text, name))
                       for name, ready in READY_LINES.items())

        self.wait_for(all_ready, STARTUP_TIMEOUT, "redis, mail, worker and web to be ready")

    def stop_and_check(self, signum: int, *, group: bool) -> int:
        """Send ``signum`` (to the runner's process group, as a terminal does, or to the
        runner alone); assert it exits and leaves no process behind; its exit status."""
        if group:
            os.killpg(self.runner.pid, signum)
        else:
            os.kill(self.runner.pid, signum)
        try:
            returncode = self.runner.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"devservers.run still running {SHUTDOWN_TIMEOUT}s after {signal.Signals(signum).name}; "
                f"processes:\n{describe(self.pids())}\n{self.log()}"
            ) from None
        try:
            wait_until(lambda: not self.pids(), SHUTDOWN_TIMEOUT, 0.1,
                       message="every process of the run to exit")
        except AssertionError as error:
            raise AssertionError(f"{error}; left:\n{describe(self.pids())}\n{self.log()}") from None
        return returncode

    def cleanup(self) -> None:
        if self.runner is not None and self.runner.poll() is None:
            self.runner.terminate()  # the runner stops what it started...
            try:
                self.runner.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.runner.pid, signal.SIGKILL)
                self.runner.wait(10)
        # ...and anything left (its processes run in their own sessions) is killed here.
        def all_gone() -> bool:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return not self.pids()

        try:
            wait_until(all_gone, 10, interval=0.1, message="the run's processes to be gone")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def run():
    run = Run()
    try:
        yield run
    finally:
        run.cleanup()


def test_the_web_and_worker_command_lines_are_the_procfiles(tmp_path):
    """``make run`` runs the Procfile's web and worker lines (no copy of them), with the
    venv first on PATH, the web server on 127.0.0.1 whatever WEB_HOST says, PORT 5000 and
    two worker processes and no gunicorn control socket unless set."""
    procfile = parse_procfile(PROCFILE.read_text()).processes
    environ = run_environ({"PATH": "/usr/bin", "WEB_HOST": "0.0.0.0"})
    settings = ("WEB_HOST", "PORT", "CELERY_WORKER_CONCURRENCY")
    assert [environ[name] for name in settings] == ["127.0.0.1", "5000", "2"]
    assert environ["GUNICORN_CMD_ARGS"] == "--no-control-socket"
    assert environ["PATH"] == f"{BIN}{os.pathsep}/usr/bin"
    chosen = run_environ({"PORT": "5123", "CELERY_WORKER_CONCURRENCY": "3"})
    assert [chosen[name] for name in settings] == ["127.0.0.1", "5123", "3"]
    commands = processes(environ)
    assert list(commands) == ["redis", "mail", "worker", "web"]
    assert (commands["worker"], commands["web"]) == (f"exec {procfile['worker']}", f"exec {procfile['web']}")
    assert "${WEB_HOST:-0.0.0.0}:${PORT:-8000}" in procfile["web"]  # production binds every interface

    other = tmp_path / "Procfile"
    other.write_text("# a comment\nweb: serve --here\nworker: work --hard\nrelease: migrate\n")
    external = {**environ, "REDIS_URL": "redis://redis.example:6379/0", "MAIL_SERVER": "smtp.example"}
    assert processes(external, other) == {"worker": "exec work --hard", "web": "exec serve --here"}
    other.write_text("web: serve --here\n")
    with pytest.raises(SystemExit, match=r"has no worker line"):
        processes(environ, other)


class Browser:
    """A tiny HTTP client with a cookie jar that follows redirects (urllib, no proxies)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )

    def request(self, path: str, data: dict[str, str] | None = None, timeout: float = 10.0):
        """Return ``(status, final path, body)``; error statuses are returned, not raised."""
        body = None if data is None else urllib.parse.urlencode(data).encode()
        try:
            with self.opener.open(self.base_url + path, data=body, timeout=timeout) as response:
                return response.status, urllib.parse.urlsplit(response.url).path, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                body = error.read().decode(errors="replace")
                return error.code, urllib.parse.urlsplit(error.url).path, body

    def post_form(self, path: str, data: dict[str, str], page: str | None = None):
        """POST ``data`` with the CSRF token read from ``page`` (default: ``path`` itself)."""
        status, _, html = self.request(page or path)
        assert status == 200, f"GET {page or path} answered {status}:\n{html}"
        return self.request(path, {**data, "csrf_token": csrf_token_in(html)})


def assert_stopped_cleanly(run: Run, signum: int, returncode: int) -> None:
    text = run.log()
    assert returncode == 128 + signum, f"exit status {returncode}\n{text}"
    assert f"{signal.Signals(signum).name} received" in text, text
    assert "SIGKILL" not in text, f"a process had to be killed:\n{text}"
    for name in ("redis", "mail", "worker", "web"):
        assert re.search(rf"\| {name} stopped \(rc=", text), f"{name} did not report stopping:\n{text}"
    assert "Traceback" not in text, text
    assert not (run.instance / "redis.sock").exists(), "redis did not shut down cleanly (socket left)"


@pytest.mark.worker
@pytest.mark.parametrize("ctrl_c", ["process-group", "runner-only"])
def test_make_run_serves_the_app_and_one_ctrl_c_stops_everything(run, ctrl_c):
    run.migrate()
    run.start()
    run.wait_ready()
    browser = Browser(f"http://127.0.0.1:{run.port}")

    def login_page_answers() -> bool:
        try:
            return browser.request("/auth/login", timeout=5)[0] == 200
        except OSError:
            return False

    run.wait_for(login_page_answers, STARTUP_TIMEOUT, f"GET /auth/login on port {run.port}")
    assert (run.instance / "redis.sock").exists()
    assert "Connected to redis+socket://" + str(run.instance / "redis.sock") in run.log()
    # The Procfile's lines, with make run's settings: this machine only, PORT, -c 2.
    listening = f"Listening at: http://127.0.0.1:{run.port} "
    assert any(listening in line for line in prefixed_lines(run.log(), "web")), run.log()
    servers = [cmdline(pid) for pid in run.pids() if "bin/gunicorn" in cmdline(pid)]
    assert servers and all(f"--bind 127.0.0.1:{run.port} " in server for server in servers), servers
    assert any("concurrency: 2 (prefork)" in line for line in prefixed_lines(run.log(), "worker")), run.log()
    assert "Control socket listening" not in run.log()  # nothing made in ~/.gunicorn

    # --- a user registers, logs in and pings the worker ----------------------------------
    password = "correct horse battery"
    status, where, html = browser.post_form("/auth/register", {
        "username": "runner", "email": "runner@example.com", "password": password, "password2": password,
    })
    assert (status, where) == (200, "/auth/login"), html
    status, where, html = browser.post_form("/auth/login", {"username": "runner", "password": password})
    assert (status, where) == (200, "/"), html
    # As a JSON client: the answer names the task (the page's flash names none, and the
    # ping may end before the page that would show its alert is drawn).
    status, _, html = browser.request("/")
    assert status == 200, html
    request = urllib.request.Request(f"{browser.base_url}/ping", headers={"Accept": "application/json"},
                                     data=urllib.parse.urlencode({"csrf_token": csrf_token_in(html)}).encode())
    with browser.opener.open(request, timeout=10) as response:
        assert response.status == 202
        started = json.loads(response.read())
    task_id = started["task"]["id"]
    assert started["task"]["status_url"] == f"/tasks/{task_id}"

    def task_succeeded() -> bool:
        status, _, body = browser.request(f"/tasks/{task_id}")
        assert status == 200, body
        state = json.loads(body)
        assert state["state"] != "FAILURE", state
        failed = [line for line in prefixed_lines(run.log(), "worker")
                  if task_id in line and ("raised" in line or "Refusing" in line)]
        assert not failed, f"the worker failed task {task_id}:\n{run.log()}"
        return state["state"] == "SUCCESS" and state["progress"] == 100

    run.wait_for(task_succeeded, 60, f"task {task_id} to succeed")

    text = run.log()
    for name in ("redis", "mail", "worker", "web"):
        assert prefixed_lines(text, name), f"no lines from {name} in the log:\n{text}"
    assert any(task_id in line and "succeeded" in line for line in prefixed_lines(text, "worker")), text
    assert any("POST /ping" in line for line in prefixed_lines(text, "web")), text
    # One id per click: the access log's last field, on every worker line about its task.
    (ping,) = [line for line in prefixed_lines(text, "web") if '"POST /ping' in line]
    click = ping.rsplit(" ", 1)[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", click), ping
    about_the_task = [line for line in prefixed_lines(text, "worker") if task_id in line]
    assert len(about_the_task) >= 2 and all(f"[{click}]" in line for line in about_the_task), about_the_task

    # --- one Ctrl-C stops everything ----------------------------------------------------
    alive = run.pids()
    commands = [cmdline(pid) for pid in alive]
    for program in PROGRAMS:  # so "nothing left" below is not vacuous
        assert any(program in command for command in commands), f"{program} not found:\n{describe(alive)}"
    returncode = run.stop_and_check(signal.SIGINT, group=ctrl_c == "process-group")
    assert_stopped_cleanly(run, signal.SIGINT, returncode)


@pytest.mark.worker
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_hangup_or_terminate_stops_everything(run, signum):
    """Closing the terminal (SIGHUP) or ``kill`` (SIGTERM) stops it all too."""
    run.start()
    run.wait_ready()
    assert len(run.pids()) >= len(PROGRAMS)
    returncode = run.stop_and_check(signum, group=False)
    assert_stopped_cleanly(run, signum, returncode)


@pytest.mark.worker
def test_ctrl_c_while_the_processes_are_starting_stops_everything(run):
    """A Ctrl-C as soon as the first process has started, before any is ready."""
    run.start()
    run.wait_for(lambda: "started (pid=" in run.log(), STARTUP_TIMEOUT, "a process to start", interval=0.005)
    returncode = run.stop_and_check(signal.SIGINT, group=True)
    text = run.log()
    assert returncode == 128 + signal.SIGINT, f"exit status {returncode}\n{text}"
    assert "Traceback" not in text, text
