"""/healthz reports whether the database and the broker answer."""
import time


def test_healthy_when_database_and_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def test_unavailable_names_the_broker_when_it_is_down(make_app, tmp_path):
    app = make_app(REDIS_URL=f"redis+socket://{tmp_path / 'no-redis-here.sock'}")
    began = time.monotonic()
    response = app.test_client().get("/healthz")
    assert time.monotonic() - began < 10  # a load balancer's probe must not hang
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] and not body["checks"]["broker"]["ok"]
    assert "error" in body["checks"]["broker"]


def test_unavailable_names_the_database_when_it_is_down(app_environ, tmp_path):
    from app import create_app
    from config import TestingConfig

    unreachable = f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}"
    app = create_app(TestingConfig({**app_environ, "DATABASE_URL": unreachable}))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert not checks["database"]["ok"] and checks["broker"]["ok"]


def test_needs_no_login(client):
    assert client.get("/healthz").status_code == 200
