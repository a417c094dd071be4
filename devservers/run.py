"""Run the whole app on one machine: web, worker, and the local Redis and SMTP sink.

``make run`` calls this after installing and migrating. Each process's output is
prefixed with its name (honcho); one Ctrl-C stops them all.
"""
from __future__ import annotations

import os
import shlex
import sys

from flask.cli import load_dotenv
from honcho.manager import Manager


def processes(environ: dict[str, str]) -> dict[str, str]:
    """The commands to run: the embedded services only where nothing external is set."""
    python = shlex.quote(sys.executable)
    bindir = os.path.dirname(sys.executable)
    port = environ.get("PORT", "5000")
    commands: dict[str, str] = {}
    if not (environ.get("REDIS_URL") or environ.get("CELERY_BROKER_URL")):
        commands["redis"] = f"exec {python} -m devservers.redis_server"
    if not environ.get("MAIL_SERVER"):
        commands["mail"] = f"exec {python} -u -m devservers.smtp_sink"
    commands["worker"] = f"exec {bindir}/celery -A celery_worker.celery worker -l info -c 2"
    commands["web"] = f"exec {bindir}/flask --app celery_worker:app run --host 127.0.0.1 --port {port}"
    return commands


def main() -> int:
    load_dotenv()
    environ = dict(os.environ)
    environ.setdefault("PYTHONUNBUFFERED", "1")
    manager = Manager()
    for name, command in processes(environ).items():
        manager.add_process(name, command, env=environ)
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
