"""/healthz reports whether the database and the broker answer, and nothing more."""
import logging
import socket
import time


def test_healthy_when_database_and_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def assert_only_verdicts(body: dict) -> None:
    """The public body: a status and, per check, whether it passed and how long it took."""
    assert set(body) == {"status", "checks"}
    for check in body["checks"].values():
        assert set(check) <= {"ok", "ms"}


def test_unavailable_names_the_broker_when_it_is_down(make_app, tmp_path, caplog):
    socket_path = tmp_path / "no-redis-here.sock"
    app = make_app(REDIS_URL=f"redis+socket://{socket_path}")
    began = time.monotonic()
    with caplog.at_level(logging.WARNING):
        response = app.test_client().get("/healthz")
    assert time.monotonic() - began < 10  # a load balancer's probe must not hang
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] and not body["checks"]["broker"]["ok"]
    assert_only_verdicts(body)
    assert str(socket_path) not in response.get_data(as_text=True)
    assert any("Health check broker failed" in r.getMessage() and str(socket_path) in r.getMessage()
               for r in caplog.records), "the log says why the broker check failed"


def test_unavailable_names_the_database_when_it_is_down(app_environ, tmp_path, caplog):
    from app import create_app
    from config import TestingConfig

    unreachable = f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}"
    app = create_app(TestingConfig({**app_environ, "DATABASE_URL": unreachable}))
    with caplog.at_level(logging.WARNING):
        response = app.test_client().get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert not checks["database"]["ok"] and checks["broker"]["ok"]
    assert_only_verdicts(response.get_json())
    assert "unable to open database file" not in response.get_data(as_text=True)
    assert any("Health check database failed" in r.getMessage()
               and "unable to open database file" in r.getMessage()
               for r in caplog.records), "the log says why the database check failed"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_failing_broker_shows_no_host_port_or_error_text(make_app):
    port = closed_port()
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    assert_only_verdicts(response.get_json())
    for secret in ("127.0.0.1", str(port), "redis", "Error", "refused"):
        assert secret not in text


def test_needs_no_login(client):
    assert client.get("/healthz").status_code == 200
