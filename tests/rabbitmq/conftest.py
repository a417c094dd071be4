"""A real RabbitMQ as broker, the session's Redis as result backend, a real worker.

The server and the stack live as long as this package's tests: the worker stops and
RabbitMQ shuts down when the last test here has run, and the test process's Celery app
is bound back to Redis, so later modules never publish to a broker that is gone.
"""
from __future__ import annotations


import pytest

from app import create_app
from app.extensions import celery, db
from config import TestingConfig
from tests.conftest import LiveStack, base_environ, empty_database
from tests.support.rabbitmq import RabbitMQServer
from tests.support.services import WorkerProcess, flask_db, process_environ

#: Virtual hosts: the live stack's, one no worker consumes (to look at waiting
#: messages), and one for the worker-crash test's own workers.
LIVE_VHOST, HELD_VHOST, CRASH_VHOST = "microblog", "held", "crash"

_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how long RabbitMQ took to start and stop (the suite has a time budget)."""
    if _timings:
        terminalreporter.write_line("RabbitMQ: " + ", ".join(f"{k} {v:.1f}s" for k, v in _timings.items()))


@pytest.fixture(scope="package")
def rabbitmq(tmp_path_factory, redis_service, smtp_server, unit_redis_db):
    """A RabbitMQ node of this run's own; fails (never skips) when it cannot start."""
    previous = celery.flask_app
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"), vhosts=(LIVE_VHOST, HELD_VHOST, CRASH_VHOST))
    server.start()
    _timings["started in"] = server.startup_seconds
    yield server
    # Close the test process's AMQP connections while the server is up, then point
    # Celery back at Redis: the app bound before this package, or the unit database.
    celery.pool.force_close_all()
    if previous is None:
        directory = tmp_path_factory.mktemp("after-rabbitmq")
        previous = create_app(TestingConfig(base_environ(directory, redis_service, smtp_server, "sqlite://",
                                                         unit_redis_db)))
    celery.init_app(previous)
    server.stop()
    _timings["stopped in"] = server.stop_seconds


def rabbit_environ(live_environ: dict[str, str], server: RabbitMQServer, vhost: str) -> dict[str, str]:
    """The stack's settings on another virtual host (the database and Redis stay)."""
    return {**live_environ, "CELERY_BROKER_URL": server.url(vhost)}


@pytest.fixture(scope="package")
def rabbit_stack(rabbitmq, redis_service, smtp_server, tmp_path_factory):
    """A database built by ``flask db upgrade`` and a worker consuming from RabbitMQ; the
    results go to a Redis logical database of the stack's own (``redis_db``)."""
    directory = tmp_path_factory.mktemp("rabbit-live")
    redis_db = redis_service.fresh_db()
    environ = base_environ(directory, redis_service, smtp_server, f"sqlite:///{directory / 'live.db'}",
                           redis_db)
    environ.update({
        "CELERY_BROKER_URL": rabbitmq.url(LIVE_VHOST),
        "CELERY_RESULT_BACKEND": redis_service.url_for_db(redis_db),
        # A transient SMTP error is retried within a second, through the broker.
        "MAIL_RETRY_BACKOFF": "0.4",
        "MAIL_RETRY_BACKOFF_MAX": "2",
    })
    flask_db(environ, "upgrade")
    create_app(TestingConfig(environ))  # binds the test process's Celery app to RabbitMQ
    worker = WorkerProcess(process_environ(environ), directory / "worker.log", concurrency=1)
    try:
        worker.start(celery)
        yield LiveStack(directory, environ, worker, redis_db)
    finally:
        worker.stop()


@pytest.fixture
def rabbit_app(rabbit_stack):
    """An app on the stack's database and broker; every table is emptied after the test."""
    app = create_app(TestingConfig(rabbit_stack.environ))
    yield app
    empty_database(app)
    with app.app_context():
        db.engine.dispose()
