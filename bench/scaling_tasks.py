"""The no-op task bench/worker_scaling.py measures, importable by its workers.

    celery -A celery_worker.celery worker -I bench.scaling_tasks ...

It is registered on the app's own ``app.extensions.celery`` (CeleryWithContext), so it
goes the real way: sent from a request, replayed in that request by the worker. It is
routed to the default ``celery`` queue, which the benchmark's workers consume along
with ``exports`` and ``mail``.
"""
from __future__ import annotations

from app.extensions import celery


@celery.task(name="bench.scaling.noop", queue="celery")
def noop():
    return None
