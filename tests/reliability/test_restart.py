"""Restart safety: work queued or running when the web server, the worker and Redis get
SIGTERM is done after they come back; none of it is lost, none of it is done twice.

The module runs the whole stack as real processes: Redis with persistence (append-only
file, fsync every second, and snapshots) in a short directory under /tmp, gunicorn
serving the app over real HTTP, and a Celery worker, all on one SQLite database and
the session's SMTP server. Each test stops them "in the middle of work" and starts
them again on the same data directory, socket, database and port:

* work queued by HTTP while no worker runs (pings, exports, welcome emails with their
  countdown) is in Redis's files after a clean SIGTERM and all of it runs after the restart;
* SIGTERM reaching the worker (its whole process group, as systemd sends it), gunicorn and
  Redis at the same moment, while an export runs, a welcome email waits for its countdown
  and a ping waits in the queue: the export is interrupted (the pool child exits on
  SIGTERM; Redis may already be gone when the worker tries to hand the message back), so
  the message stays unacknowledged in Redis's append-only file and is handed out again
  after the visibility timeout; everything then completes, each email sent once.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from app import create_app
from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, Task, TaskState, User
from config import TestingConfig, redis_socket_url
from devservers.redis_server import start_redis
from tests.conftest import TEST_SECRET_KEY, AuthActions, empty_database
from tests.support.services import BIN, ROOT, WorkerProcess, _die_with_parent, queued_and_unacked, wait_until

EXPORT_SUBJECT = "Your posts are ready"
WELCOME_SUBJECT = "Welcome to Microblog"
#: Welcome emails go out this many seconds after registration (a countdown task).
WELCOME_DELAY = 6
#: Longer than any countdown here and than an export takes, as in production.
VISIBILITY_TIMEOUT = 10
#: Enough posts for an export to take a couple of seconds.
POSTS = 600_000
STOP_TIMEOUT = 20.0

pytestmark = pytest.mark.worker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- a tiny HTTP client with the test client's interface, for AuthActions ------------------


class HttpResponse:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.data = body

    def get_data(self, as_text: bool = False):
        return self.data.decode() if as_text else self.data

    def get_json(self):
        return json.loads(self.data)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the 3xx back, as Flask's test client does


class HttpClient:
    """Real HTTP with a cookie jar; redirects and error statuses are returned, not followed."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            _NoRedirects(),
        )

    def open(self, method: str, path: str, base_url: str, data: dict | None = None,
             headers: dict | None = None) -> HttpResponse:
        url = urllib.parse.urljoin(base_url, path.lstrip("/"))
        body = None if data is None else urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with self.opener.open(request, timeout=10) as response:
                return HttpResponse(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return HttpResponse(error.code, error.headers, error.read())

    def get(self, path: str, base_url: str, **kw) -> HttpResponse:
        return self.open("GET", path, base_url, **kw)

    def post(self, path: str, base_url: str, **kw) -> HttpResponse:
        return self.open("POST", path, base_url, **kw)


# --- the stack ---------------------------------------------------------------------------


class Stack:
    """Redis (persistent), gunicorn and a worker on one directory; each can stop and start."""

    def __init__(self, directory: Path, logs: Path, smtp_port: int) -> None:
        self.directory = directory
        self.logs = logs
        self.socket_path = directory / "redis.sock"
        self.redis_data = directory / "redis"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self.environ = {
            "MICROBLOG_CONFIG": "testing",
            "SECRET_KEY": TEST_SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{directory / 'app.db'}",
            "REDIS_URL": redis_socket_url(self.socket_path),
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "INSTANCE_PATH": str(directory / "instance"),
            "EXPORTS_DIR": str(directory / "instance" / "exports"),
            "MAIL_MAX_ATTACHMENT_BYTES": "100000",
            "WELCOME_EMAIL_DELAY": str(WELCOME_DELAY),
            "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            # An export interrupted by the stop leaves its lease on the row: short here.
            "EXPORT_LEASE_SECONDS": "3",
        }
        self.process_env = {**os.environ, **self.environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
        self.redis: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.worker: WorkerProcess | None = None
        #: Pings and inspects the worker: a Celery app of its own per Redis run, with
        #: connections of its own (kombu pools connections by URL and transport options,
        #: process-wide), as the pooled connections of one that outlived Redis are dead.
        self.control: Celery | None = None
        self.runs = 0

    def migrate(self) -> None:
        subprocess.run([str(BIN / "flask"), "--app", "celery_worker:app", "db", "upgrade"],
                       cwd=ROOT, env=self.process_env, check=True, capture_output=True)

    def app(self):
        return create_app(TestingConfig(self.environ))

    def redis_client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket_path))

    def start(self, *, worker: bool = True) -> None:
        """Redis, then the web server, then (optionally) a worker: as after a reboot."""
        self.runs += 1
        self.redis = start_redis(self.socket_path, self.redis_data, persist=True,
                                 log_path=self.logs / "redis.log", preexec_fn=_die_with_parent)
        self._close_control()
        self.control = Celery("restart-control", broker=self.environ["REDIS_URL"], set_as_current=False)
        self.control.conf.broker_transport_options = {"client_name": f"restart-test-control-{self.runs}"}
        self.start_web()
        if worker:
            self.start_worker()

    def start_web(self) -> None:
        log = open(self.logs / f"web-{self.runs}.log", "ab")
        self.web = subprocess.Popen(
            [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "4",
             "--graceful-timeout", "10", "celery_worker:app"],
            cwd=ROOT, env=self.process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

        def answers() -> bool:
            if self.web.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.web.returncode}:\n{self.web_log()}")
            return self._listening() and HttpClient().get("/auth/login", self.base_url).status_code == 200

        wait_until(answers, 60, interval=0.1, message="gunicorn to serve the login page")

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def start_worker(self) -> WorkerProcess:
        self.worker = WorkerProcess(self.process_env, self.logs / f"worker-{self.runs}.log", concurrency=1)
        self.worker.start(self.control)
        return self.worker

    def _close_control(self) -> None:
        if self.control is not None:
            self.control.pool.force_close_all()
            self.control.close()
            self.control = None

    def web_log(self) -> str:
        path = self.logs / f"web-{self.runs}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def sigterm_all(self) -> dict[str, int]:
        """SIGTERM to the worker (its whole process group, as systemd does), gunicorn and Redis
        at the same moment; wait for each to exit and return the exit statuses."""
        running = {}
        if self.worker is not None and self.worker.process.poll() is None:
            running["worker"] = (self.worker.process, True)
        if self.web is not None and self.web.poll() is None:
            running["web"] = (self.web, True)
        if self.redis is not None and self.redis.poll() is None:
            running["redis"] = (self.redis, False)
        for process, group in running.values():
            if group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.terminate()
        return {name: process.wait(STOP_TIMEOUT) for name, (process, _) in running.items()}

    def kill_leftovers(self) -> None:
        """Teardown: whatever still runs gets SIGTERM, then SIGKILL."""
        if self.worker is not None:
            self.worker.stop()
        self._close_control()
        for process, group in ((self.web, True), (self.redis, False)):
            if process is None or process.poll() is not None:
                continue
            (os.killpg(process.pid, signal.SIGTERM) if group else process.terminate())
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                (os.killpg(process.pid, signal.SIGKILL) if group else process.kill())
                process.wait(10)

    def queued(self) -> dict[str, int]:
        """Messages waiting in each non-empty queue, and delivered-but-unacknowledged ones."""
        return queued_and_unacked(self.redis_client())

    def wait_until_idle(self, timeout: float = 30) -> None:
        hostname = self.worker.hostname

        def idle() -> bool:
            if any(self.queued().values()):
                return False
            inspect = self.control.control.inspect([hostname], timeout=1)
            replies = [inspect.active(), inspect.reserved(), inspect.scheduled()]
            return all(reply and reply.get(hostname) == [] for reply in replies)

        wait_until(idle, timeout, interval=0.2, message="the worker to be idle with nothing queued")


@pytest.fixture(scope="module")
def stack(smtp_server, tmp_path_factory):
    controller, _ = smtp_server
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="rs-"))  # short: redis.sock must fit
    stack = Stack(directory, tmp_path_factory.mktemp("restart"), controller.port)  # logs are kept
    try:
        stack.migrate()
        yield stack
    finally:
        stack.kill_leftovers()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def restart_app(stack):
    app = stack.app()
    yield app
    stack.kill_leftovers()
    empty_database(app)
    with app.app_context():
        db.engine.dispose()
    shutil.rmtree(stack.redis_data, ignore_errors=True)  # the next test starts with an empty Redis
    shutil.rmtree(stack.environ["EXPORTS_DIR"], ignore_errors=True)


def _rows(app, model, *where):
    with app.app_context():
        db.session.expire_all()
        rows = db.session.scalars(sa.select(model).where(*where)).all()
        db.session.expunge_all()
        return rows


def _tasks(app) -> list[Task]:
    return _rows(app, Task)


def _user_id(app, username: str) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.username == username))


def _all_done(app, expected_tasks: int, expected_emails: int):
    def done():
        tasks = _tasks(app)
        deliveries = _rows(app, EmailDelivery)
        tasks_done = len(tasks) == expected_tasks and all(t.finished for t in tasks)
        sent = len(deliveries) == expected_emails and all(d.status == DeliveryStatus.SENT for d in deliveries)
        return (tasks, deliveries) if tasks_done and sent else None

    return done


def test_work_queued_while_the_worker_is_down_survives_a_restart_of_everything(restart_app, stack, mail_sink):
    stack.start(worker=False)
    names = ["ada", "bea", "cyd"]
    browsers = {}
    for name in names:
        auth = browsers[name] = AuthActions(HttpClient(), base_url=stack.base_url)
        auth.signup(name)
        assert auth.post_form("/index", {"post": f"hello from {name}"}).status_code == 302
        assert auth.post_form("/ping").status_code == 302
        assert auth.post_form("/export_posts", page=f"/user/{name}").status_code == 302
    tasks = _tasks(restart_app)
    assert sorted((t.name, t.state) for t in tasks) == [("export_posts", TaskState.PENDING)] * 3 + \
        [("ping", TaskState.PENDING)] * 3
    # Three welcome emails (with their countdown), three pings, three exports: all in Redis;
    # each export's email becomes an outbox row of its own when its file is written.
    assert stack.queued() == {"celery": 3, "exports": 3, "mail": 3, "unacked": 0}  # pings, exports, welcomes

    statuses = stack.sigterm_all()  # web server and Redis; no worker is running
    assert statuses == {"web": 0, "redis": 0}, stack.web_log()
    assert not stack.socket_path.exists()  # Redis shut down cleanly

    stack.start(worker=False)
    assert stack.queued() == {"celery": 3, "exports": 3, "mail": 3, "unacked": 0}  # all came back from disk
    worker = stack.start_worker()
    tasks, deliveries = wait_until(_all_done(restart_app, 6, 6), 60, interval=0.2,
                                   message="every queued task and email to be done")
    assert all((t.state, t.progress, t.error) == (TaskState.SUCCESS, 100, None) for t in tasks)

    stack.wait_until_idle()
    exports = sorted(mail_sink.received(EXPORT_SUBJECT), key=lambda m: m.recipients)
    welcomes = sorted(mail_sink.received(WELCOME_SUBJECT), key=lambda m: m.recipients)
    assert [m.recipients for m in exports] == [[f"{n}@example.com"] for n in names]  # one each
    assert [m.recipients for m in welcomes] == [[f"{n}@example.com"] for n in names]
    assert all(d.attempts == 1 for d in deliveries)
    for task in tasks:
        assert f"[{task.id}] succeeded" in worker.log()

    # Ada's login outlived the restart, and the restarted web server reports the finished work.
    auth = browsers["ada"]
    ada_id = _user_id(restart_app, "ada")
    ada_export = next(t for t in tasks if t.name == "export_posts" and t.user_id == ada_id)
    status = auth.get(f"/tasks/{ada_export.id}").get_json()
    assert (status["state"], status["progress"]) == ("SUCCESS", 100)
    assert json.loads(auth.get(status["download_url"]).data)["posts"][0]["body"] == "hello from ada"


def test_sigterm_during_an_export_loses_nothing_it_completes_after_the_restart(restart_app, stack, mail_sink):
    stack.start(worker=False)
    max_auth = AuthActions(HttpClient(), base_url=stack.base_url)
    max_auth.signup("max")
    with restart_app.app_context():
        from app.cli import seed_posts

        assert seed_posts(db.session.get(User, _user_id(restart_app, "max")), POSTS) == POSTS
    stack.start_worker()
    wait_until(_all_done(restart_app, 0, 1), 30, message="max's welcome email")  # the queue is clear

    # Work in the middle: nia's welcome email is scheduled (a countdown), max's export runs,
    # max's ping waits in the queue behind it (one task at a time).
    nia_auth = AuthActions(HttpClient(), base_url=stack.base_url)
    nia_auth.signup("nia")
    assert max_auth.post_form("/export_posts", page="/user/max").status_code == 302
    assert max_auth.post_form("/ping").status_code == 302
    export = next(t for t in _tasks(restart_app) if t.name == "export_posts")

    def part_way():
        (row,) = _rows(restart_app, Task, Task.id == export.id)
        assert row.finished is None, f"the export ended before the SIGTERM: {row.state} {row.error}"
        return row if 1 <= row.progress <= 99 else None

    at_stop = wait_until(part_way, 60, interval=0.02, message="the export to be part-way")
    statuses = stack.sigterm_all()

    (row,) = _rows(restart_app, Task, Task.id == export.id)
    assert row.finished is None and row.progress < 100, "the SIGTERM did not interrupt the export"
    (nia_welcome,) = _rows(restart_app, EmailDelivery, EmailDelivery.recipient == "nia@example.com")
    assert nia_welcome.status == DeliveryStatus.PENDING, "the welcome email was not scheduled at the SIGTERM"
    assert mail_sink.received(EXPORT_SUBJECT) == []
    assert [m.recipients for m in mail_sink.received(WELCOME_SUBJECT)] == [["max@example.com"]]
    # Each stopped by itself (the worker's warm shutdown ended the running export).
    assert set(statuses) == {"worker", "web", "redis"}
    assert statuses["web"] == 0 and statuses["redis"] == 0, stack.web_log()

    stack.start()
    tasks, deliveries = wait_until(_all_done(restart_app, 2, 3), VISIBILITY_TIMEOUT + 60, interval=0.2,
                                   message="the export, the ping and the welcome email to be done")
    assert all((t.state, t.progress, t.error) == (TaskState.SUCCESS, 100, None) for t in tasks)
    stack.wait_until_idle()

    (message,) = mail_sink.received(EXPORT_SUBJECT)
    assert message.recipients == ["max@example.com"]
    welcomes = [m.recipients for m in mail_sink.received(WELCOME_SUBJECT)]
    assert welcomes == [["max@example.com"], ["nia@example.com"]]  # nia's once, after the restart
    (done,) = [t for t in tasks if t.id == export.id]
    exports = Path(stack.environ["EXPORTS_DIR"])
    posts = json.loads((exports / done.result_location).read_bytes())["posts"]
    assert len(posts) == POSTS and posts[-1]["body"] == f"Post {POSTS} by max"
    assert not list(exports.glob(".*.tmp"))  # the interrupted run removed its temporary file
    print(f"SIGTERM at {at_stop.progress}%, exit statuses {statuses}")
