"""Flower monitors the app's tasks, and nothing of the carried request shows there."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest
from flask import jsonify

from flask_celery_request import CONTEXT_HEADER

from app import create_app
from app.extensions import celery, csrf
from config import TestingConfig
from tests.support.probe_tasks import returns
from tests.support.services import BIN, ROOT, WorkerProcess, _die_with_parent, wait_until
from tests.support.stacks import free_port

SECRET = "flower-must-not-see-this-7f3a"


@pytest.fixture(scope="module")
def monitored(live_stack, redis_service, tmp_path_factory):
    """A worker sending task events (-E) and `celery -A celery_worker.celery flower`."""
    directory = tmp_path_factory.mktemp("flower")
    redis_db = redis_service.fresh_db()
    environ = {**live_stack.environ, "REDIS_URL": redis_service.url_for_db(redis_db)}
    process_env = {**os.environ, **environ, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1",
                   "FLOWER_UNAUTHENTICATED_API": "true"}
    create_app(TestingConfig(environ))
    worker = WorkerProcess(process_env, directory / "worker.log", concurrency=1, events=True,
                           include=["tests.support.probe_tasks"]).start(celery)
    port = free_port()
    log = open(directory / "flower.log", "ab")
    flower = subprocess.Popen(
        [str(BIN / "celery"), "-A", "celery_worker.celery", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{base}/api/workers?refresh=1") is not None, 60, interval=0.25,
                   message="Flower to answer")
        yield environ, base
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(20)
        worker.stop()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8", "replace")
    except OSError:
        return None


def test_flower_shows_the_task_but_nothing_of_its_request(monitored):
    environ, base = monitored
    app = create_app(TestingConfig(environ))

    @csrf.exempt
    def send():
        return jsonify(id=returns.apply_async(("visible-arg",)).id)

    app.add_url_rule("/send", view_func=send, methods=["POST"])
    response = app.test_client().post(
        f"/send?api_key={SECRET}&page=2", base_url="https://flower.example/",
        headers={"Authorization": f"Bearer {SECRET}", "X-Trace": "visible-header"},
        data={"password": SECRET, "note": "visible-form"},
    )
    task_id = response.get_json()["id"]
    assert celery.AsyncResult(task_id).get(timeout=30) == "visible-arg"

    def seen():
        text = _get(f"{base}/api/task/info/{task_id}")
        return text if text and '"state": "SUCCESS"' in text else None

    info = json.loads(wait_until(seen, 30, interval=0.25, message="Flower to record the task"))
    assert info["name"] == returns.name and "visible-arg" in info["args"]
    page = _get(f"{base}/task/{task_id}") or ""
    listing = _get(f"{base}/api/tasks") or ""
    for shown in (json.dumps(info), page, listing):
        assert CONTEXT_HEADER not in shown and "fcr1." not in shown  # neither the header nor its sealed value
        assert SECRET not in shown
        assert "flower.example" not in shown  # the carried request is not there at all
