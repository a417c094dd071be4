"""A real S3-compatible server for the tests: moto's standalone server, a process of its own
on 127.0.0.1, spoken to over HTTP by boto3 as a deployment speaks to its store."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from uuid import uuid4

from devservers.processes import stop_process_group
from tests.support.services import _die_with_parent, wait_until
from tests.support.stacks import free_port

#: Any values do for moto; set, boto3 looks for no credentials anywhere else.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
START_ATTEMPTS = 3


class S3Server:
    """``python -m moto.server -H 127.0.0.1 -p PORT``, logging to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.endpoint_url = ""
        self._client = None

    def start(self) -> S3Server:
        # The port is picked before the server binds it: another process may take it in
        # between, so a server that exits at once is started again on another port.
        for _ in range(START_ATTEMPTS):
            port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                )
            self.endpoint_url = f"http://127.0.0.1:{port}"
            try:
                wait_until(self._answers, 30, interval=0.1, message=f"moto's S3 server on port {port}")
                return self
            except _Exited:
                continue
        raise AssertionError(f"moto's S3 server did not start in {START_ATTEMPTS} attempts:\n{self.log()}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise _Exited()
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def environ(self) -> dict[str, str]:
        """The variables a web or worker process needs to reach this server through boto3."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, **CREDENTIALS}

    def client(self):
        """The app's S3 client for this server, its endpoint and credentials given rather
        than read from the environment; one for the whole session (building one takes
        a quarter of a second)."""
        if self._client is None:
            from app.storage import s3_client

            self._client = s3_client(endpoint_url=self.endpoint_url,
                                     aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                     region_name=CREDENTIALS["AWS_DEFAULT_REGION"])
        return self._client

    def new_bucket(self) -> str:
        """A bucket of the caller's own, empty."""
        name = f"test-{uuid4().hex}"
        self.client().create_bucket(Bucket=name)
        return name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


class _Exited(Exception):
    pass
