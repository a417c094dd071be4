"""The two Celery apps bench/context_overhead.py compares, importable by its workers.

    celery -A bench.overhead_apps.plain worker ...   # a plain celery.Celery app
    celery -A bench.overhead_apps.ours worker ...    # the app's CeleryWithContext

Importing this module builds the real Flask app, ``create_app(TestingConfig(os.environ))``,
which binds the module-level ``app.extensions.celery`` (``ours``) to it, exactly as
``celery_worker.py`` does in production. The plain app gets the very same Celery
settings (``celery_settings(flask_app.config)``: broker, result backend, serializers,
``task_track_started`` ...), so the only difference between the two sides is the
Task class. The benchmark sets the environment (SECRET_KEY, DATABASE_URL, REDIS_URL,
INSTANCE_PATH, BENCH_QUEUE_PREFIX) before importing it and hands the same environment
to the workers.

Each side has two no-op tasks that differ only in their queue: ``noop`` goes to the
queue its worker consumes, ``noop_sink`` to a queue nobody consumes (the enqueue
measurement; the benchmark purges it after every round).
"""
from __future__ import annotations

import os

from celery import Celery
from flask import has_request_context, request

from app import create_app
from app.celery_context import celery_settings
from app.extensions import celery as ours
from config import TestingConfig

for _name in ("SECRET_KEY", "REDIS_URL", "DATABASE_URL", "INSTANCE_PATH"):
    if not os.environ.get(_name):
        raise RuntimeError(
            f"bench.overhead_apps needs {_name} in the environment; run bench/context_overhead.py"
        )

PREFIX = os.environ.get("BENCH_QUEUE_PREFIX", "bench")
QUEUES = {
    side: {"work": f"{PREFIX}.{side}", "sink": f"{PREFIX}.{side}.sink"} for side in ("plain", "ours")
}

flask_app = create_app(TestingConfig(os.environ))

plain = Celery("bench_plain")
plain.conf.update(celery_settings(flask_app.config))


@plain.task(name="bench.plain.noop", queue=QUEUES["plain"]["work"])
def plain_noop():
    return None


@plain.task(name="bench.plain.noop_sink", queue=QUEUES["plain"]["sink"])
def plain_noop_sink():
    return None


@plain.task(name="bench.plain.probe", queue=QUEUES["plain"]["work"])
def plain_probe():
    """Sanity check: a plain task runs outside any Flask request."""
    return {"has_request": has_request_context()}


@ours.task(name="bench.noop", queue=QUEUES["ours"]["work"])
def ours_noop():
    return None


@ours.task(name="bench.noop_sink", queue=QUEUES["ours"]["sink"])
def ours_noop_sink():
    return None


@ours.task(name="bench.probe", queue=QUEUES["ours"]["work"])
def ours_probe():
    """Sanity check: our task runs inside the replayed request."""
    if not has_request_context():
        return {"has_request": False}
    return {
        "has_request": True,
        "url": request.url,
        "method": request.method,
        "form": sorted(request.form.items(multi=True)),
        "headers": sorted(request.headers.items()),
    }


SIDES = {
    "plain": {"celery": plain, "noop": plain_noop, "sink": plain_noop_sink, "probe": plain_probe,
              "target": "bench.overhead_apps.plain"},
    "ours": {"celery": ours, "noop": ours_noop, "sink": ours_noop_sink, "probe": ours_probe,
             "target": "bench.overhead_apps.ours"},
}
