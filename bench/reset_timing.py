"""Does the password-reset request take the same time whether or not the address has an
account? (If it did not, its timing would tell who is registered.)

In process, through the real views with CSRF on: an embedded Redis as broker (no worker
consumes; the queue is purged between rounds) and a SQLite file, rate limits off (they
would refuse the bench, and they treat both cases alike). Known and unknown addresses
alternate request by request; the figure is the median of per-round ratios of medians.

    .venv/bin/python bench/reset_timing.py [--rounds 5] [--n 60]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import TestingConfig, redis_socket_url  # noqa: E402
from devservers.redis_server import start_redis, stop_redis  # noqa: E402

KNOWN, UNKNOWN = "known@example.org", "nobody@example.org"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=60, help="requests per case and round")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mbreset-", dir="/tmp"))
    redis_process = start_redis(tmp / "redis.sock", tmp / "redis", persist=False, log_path=tmp / "redis.log")
    try:
        from app import create_app
        from app.extensions import celery, db
        from app.models import User

        app = create_app(TestingConfig({
            "SECRET_KEY": "bench-secret-key-0123456789abcdef", "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
            "REDIS_URL": redis_socket_url(tmp / "redis.sock"), "INSTANCE_PATH": str(tmp / "instance"),
            "RATELIMIT_ENABLED": "0", "FLASK_SKIP_DOTENV": "1",
        }))
        with app.app_context():
            db.create_all()
            user = User(username="known", email=KNOWN)
            user.set_password("lantern quiet mango")
            db.session.add(user)
            db.session.commit()
        client = app.test_client()
        page = client.get("/auth/reset_password_request").get_data(as_text=True)
        token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]

        def ask(email: str) -> float:
            began = time.perf_counter()
            response = client.post("/auth/reset_password_request", data={"email": email, "csrf_token": token})
            elapsed = time.perf_counter() - began
            assert response.status_code == 302, response.get_data(as_text=True)[:300]
            return elapsed

        for email in (KNOWN, UNKNOWN) * 10:  # warm up
            ask(email)
        ratios, known_all, unknown_all = [], [], []
        for _ in range(args.rounds):
            known, unknown = [], []
            for _ in range(args.n):
                known.append(ask(KNOWN))
                unknown.append(ask(UNKNOWN))
            celery.control.purge()
            known_all += known
            unknown_all += unknown
            ratios.append(statistics.median(unknown) / statistics.median(known))
        ratio = statistics.median(ratios)
        print(f"reset request, known address:   median {statistics.median(known_all) * 1e3:.2f} ms")
        print(f"reset request, unknown address: median {statistics.median(unknown_all) * 1e3:.2f} ms")
        print(f"unknown / known: {ratio:.3f}x (per-round {', '.join(f'{r:.3f}' for r in ratios)}); "
              f"target 0.90x-1.10x: {'met' if 0.9 <= ratio <= 1.1 else 'missed'}")
    finally:
        stop_redis(redis_process)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("FLASK_SKIP_DOTENV", "1")
    main()
