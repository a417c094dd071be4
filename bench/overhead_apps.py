"""The Celery apps bench/context_overhead.py compares, importable by its workers.

    celery -A bench.overhead_apps.ref worker ...    # plain celery.Celery, configured like the app
    celery -A bench.overhead_apps.ours worker ...   # the app's CeleryWithContext (Flask-Celery-Request)
    celery -A bench.overhead_apps.peer worker ...   # flask-celeryext's request-context task pattern

Importing this module builds the real Flask app, ``create_app(TestingConfig(os.environ))``,
which binds the module-level ``app.extensions.celery`` (``ours``) to it, exactly as
``celery_worker.py`` does in production. The sides:

ref
    plain ``celery.Celery`` with the very settings the extension read,
    ``celery_settings(flask_app.config)`` (broker, result backend, serializers, prefetch,
    ``task_acks_late``, ``task_track_started``, queues, routes, retry policies ...): only
    the Task class differs from ours. The fair reference.
default
    ``Celery()`` with only ``broker_url`` and ``result_backend`` set (the same Redis),
    everything else Celery's defaults. Enqueue only: it has no worker.
ours
    ``app.extensions.celery``: each task carries the sending request, sealed in a
    header, and runs inside it in the worker.
peer
    flask-celeryext's way (reimplemented here, not installed): a plain Celery app
    configured like the app whose Task ``__call__`` runs the task in an empty
    ``test_request_context()`` of this same Flask app, with ``preprocess_request()``
    before and ``process_response(response_class())`` after. Nothing of the sending
    request travels.

Each side has a ``noop`` task on the queue its worker consumes, a ``noop_sink`` on a
queue nobody consumes (the enqueue measurement; the benchmark purges it after every
round) and a ``probe`` that reports the context the task ran in. The benchmark sets the
environment (SECRET_KEY, DATABASE_URL, REDIS_URL, INSTANCE_PATH, BENCH_QUEUE_PREFIX)
before importing this module and hands the same environment to the workers.
"""
from __future__ import annotations

import os

from celery import Celery, Task
from flask import has_request_context, request
from flask_celery_request.compat import PROCESS_RESPONSE_TAKES_CONTEXT

from app import create_app
from app.celery_config import celery_settings
from app.extensions import celery as ours
from config import TestingConfig

for _name in ("SECRET_KEY", "REDIS_URL", "DATABASE_URL", "INSTANCE_PATH"):
    if not os.environ.get(_name):
        raise RuntimeError(
            f"bench.overhead_apps needs {_name} in the environment; run bench/context_overhead.py"
        )

PREFIX = os.environ.get("BENCH_QUEUE_PREFIX", "bench")
SIDE_NAMES = ("ref", "default", "ours", "peer")
#: The sides that have a worker (default is measured on the sending side only).
WORKER_SIDES = ("ref", "ours", "peer")
QUEUES = {side: {"work": f"{PREFIX}.{side}", "sink": f"{PREFIX}.{side}.sink"} for side in SIDE_NAMES}

flask_app = create_app(TestingConfig(os.environ))


def run_in_test_request(app, run, *args, **kwargs):
    """flask-celeryext's ``RequestContextTask.__call__``: ``run`` in a fresh, empty test
    request of ``app``, its before_request and after_request hooks around it."""
    with app.test_request_context() as ctx:
        if PROCESS_RESPONSE_TAKES_CONTEXT:  # Flask 3.2: the dispatch methods take the context
            app.preprocess_request(ctx)
            rv = run(*args, **kwargs)
            app.process_response(ctx, app.response_class())
        else:
            app.preprocess_request()
            rv = run(*args, **kwargs)
            app.process_response(app.response_class())
        return rv


class RequestContextTask(Task):
    """The peer's Task class: every run in :func:`run_in_test_request`."""

    def __call__(self, *args, **kwargs):
        return run_in_test_request(self.app.flask_app, self.run, *args, **kwargs)


ref = Celery("bench_ref")
ref.conf.update(celery_settings(flask_app.config))

peer = Celery("bench_peer", task_cls=RequestContextTask)
peer.conf.update(celery_settings(flask_app.config))
peer.flask_app = flask_app  # as flask_celeryext.create_celery_app does

default = Celery("bench_default")
default.conf.broker_url = flask_app.config["CELERY_BROKER_URL"]
default.conf.result_backend = flask_app.config["CELERY_RESULT_BACKEND"]


def _probe_report() -> dict:
    if not has_request_context():
        return {"has_request": False}
    from flask_login import current_user

    return {
        "has_request": True,
        "url": request.url,
        "method": request.method,
        "form": sorted(request.form.items(multi=True)),
        "headers": sorted(request.headers.items()),
        "user": current_user.get_id() if current_user.is_authenticated else None,
    }


def _tasks(celery_app: Celery, side: str) -> dict:
    queues = QUEUES[side]

    @celery_app.task(name=f"bench.{side}.noop", queue=queues["work"])
    def noop():
        return None

    @celery_app.task(name=f"bench.{side}.noop_sink", queue=queues["sink"])
    def noop_sink():
        return None

    @celery_app.task(name=f"bench.{side}.probe", queue=queues["work"])
    def probe():
        """What the task ran in: the replayed request (ours), an empty one (peer), none (ref)."""
        return _probe_report()

    return {"noop": noop, "sink": noop_sink, "probe": probe}


SIDES = {
    side: {"celery": celery_app, "target": f"bench.overhead_apps.{side}", **_tasks(celery_app, side)}
    for side, celery_app in (("ref", ref), ("default", default), ("ours", ours), ("peer", peer))
}
