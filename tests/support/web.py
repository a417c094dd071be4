"""A real web server for the tests (gunicorn on a socket made here) and a browser for it."""
from __future__ import annotations

import http.cookiejar
import json
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devservers.processes import stop_process_group
from tests.support.services import BIN, ROOT, _die_with_parent, wait_until

HTTP_TIMEOUT = 60


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the 302 back as it is


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict:
        return json.loads(self.body)


class Browser:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())

    def request(self, method: str, path: str, data: dict | None = None, headers: dict | None = None) -> Reply:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(urllib.parse.urljoin(self.base_url, path), data=body, method=method,
                                         headers=headers or {})
        if method == "POST":
            request.add_header("Referer", self.base_url)  # same-origin, as a browser sends
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT) as response:
                body = response.read().decode(errors="replace")
                return Reply(response.status, body, dict(response.headers))
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx, 5xx
            with error:
                return Reply(error.code, error.read().decode(errors="replace"), dict(error.headers))

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict, **kw) -> Reply:
        return self.request("POST", path, data=data, **kw)


class Server:
    def __init__(self, app, base_url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.app = app
        self.base_url = base_url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_gunicorn(app, environ: Mapping[str, str], log_path: Path, *options: str) -> Iterator[Server]:
    """``gunicorn celery_worker:app`` (2 processes x 8 threads) on ``environ``, serving the
    login page; stopped (its whole process group) on the way out. The listening socket is
    made here and handed over: no free-port race."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    process = None
    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(BIN / "gunicorn"), "--bind", f"fd://{listener.fileno()}",
                 "--workers", "2", "--threads", "8", "--graceful-timeout", "10",
                 *options, "--no-control-socket", "celery_worker:app"],
                cwd=ROOT, env={**os.environ, **environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),), start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        listener.close()
        server = Server(app, base_url, process, log_path)

        def serves_the_login_page() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {process.returncode}:\n{server.log()}")
            return Browser(base_url).get("/auth/login").status == 200

        wait_until(serves_the_login_page, 60, interval=0.2, message="gunicorn to serve the login page")
        yield server
    finally:
        listener.close()
        if process is not None:
            stop_process_group(process)
