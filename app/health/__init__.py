"""``/healthz``: whether this web process reaches its database and broker, for load balancers."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify

from app.extensions import celery, csrf, db

bp = Blueprint("health", __name__)


def _check(name: str, probe) -> dict:
    """``{"ok": ..., "ms": ...}``: the endpoint is public, so why a check failed (which
    names hosts, ports, socket paths) goes to the log only."""
    began = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure means "not healthy"
        current_app.logger.warning("Health check %s failed: %s: %s", name, type(exc).__name__, exc)
        ok = False
    else:
        ok = True
    return {"ok": ok, "ms": round((time.perf_counter() - began) * 1000, 1)}


def _database() -> None:
    with db.engine.connect() as connection:
        connection.execute(db.text("SELECT 1"))


def _broker() -> None:
    with celery.connection_for_write() as connection:
        # One retry at once: kombu's default pause of 2 s between attempts would make a
        # frozen broker's check (each attempt a socket timeout) outlast a prober's patience.
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        connection.default_channel  # opens a channel: the broker really answers


@bp.route("/healthz")
@csrf.exempt
def healthz():
    """200 with ``{"status": "ok", ...}`` when both answer, 503 with the failing check otherwise."""
    checks = {"database": _check("database", _database), "broker": _check("broker", _broker)}
    healthy = all(check["ok"] for check in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
