"""``/healthz``: whether this web process reaches its database and broker, for load balancers."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify

from app.extensions import celery, csrf, db

bp = Blueprint("health", __name__)


def _check(probe) -> dict:
    began = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure means "not healthy"; say which
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "ms": round((time.perf_counter() - began) * 1000, 1)}


def _database() -> None:
    with db.engine.connect() as connection:
        connection.execute(db.text("SELECT 1"))


def _broker() -> None:
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        connection.default_channel  # opens a channel: the broker really answers


@bp.route("/healthz")
@csrf.exempt
def healthz():
    """200 with ``{"status": "ok", ...}`` when both answer, 503 with the failing check otherwise."""
    checks = {"database": _check(_database), "broker": _check(_broker)}
    healthy = all(check["ok"] for check in checks.values())
    if not healthy:
        current_app.logger.warning("Health check failed: %s", checks)
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
