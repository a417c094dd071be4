"""What RabbitMQ holds: the routed queue, the sealed context in one AMQP header, nothing
readable of the request (its credentials least of all).

The app here publishes to a virtual host no worker consumes from, through the real
forms (register, log in, ping, export), and the test takes the waiting messages out of the
queues with basic.get, as the broker holds them.
"""
from __future__ import annotations

import json

import amqp
import pytest
import sqlalchemy as sa

from flask_celery_request import CONTEXT_HEADER

from app import create_app
from app.extensions import db
from app.models import User
from config import TestingConfig
from tests.conftest import AuthActions, csrf_token_in, empty_database
from tests.rabbitmq.conftest import HELD_VHOST, rabbit_environ

SITE = "https://held.example.org/"
PASSWORD = "rabbit-held-password-5f3a"
QUEUES = ("celery", "exports", "mail")


def take_all(server, vhost: str, queue: str) -> list[amqp.Message]:
    """Every message waiting in ``queue`` (none if it was never declared), removed."""
    connection = server.connection(vhost)
    try:
        channel = connection.channel()
        channel.auto_decode = False  # the body as bytes, exactly as stored
        try:
            channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            return []
        messages = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            messages.append(message)
        return messages
    finally:
        connection.close()


def raw(message: amqp.Message) -> bytes:
    """Everything the broker keeps of a message: body, properties and headers."""
    return message.body + json.dumps(message.properties, default=str, ensure_ascii=False).encode()


@pytest.fixture
def held_app(rabbit_stack, rabbitmq):
    app = create_app(TestingConfig(rabbit_environ(rabbit_stack.environ, rabbitmq, HELD_VHOST)))
    yield app
    for queue in QUEUES:
        take_all(rabbitmq, HELD_VHOST, queue)
    empty_database(app)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def held_messages(held_app, rabbitmq):
    """Register (the welcome email), ping the worker and export; take what each queue holds."""
    client = held_app.test_client()
    auth = AuthActions(client, base_url=SITE)
    register_token = auth.csrf_token("/auth/register")
    response = auth.post("/auth/register", data={
        "username": "hal", "email": "hal@example.com", "password": PASSWORD, "password2": PASSWORD,
        "csrf_token": register_token,
    })
    assert response.status_code == 302
    assert auth.login("hal", PASSWORD).status_code == 302
    assert auth.post_form("/ping").status_code == 302
    export_token = csrf_token_in(auth.get("/user/hal").get_data(as_text=True))
    assert auth.post("/export_posts", data={"csrf_token": export_token}).status_code == 302
    with held_app.app_context():
        user_id = db.session.scalar(sa.select(User.id).where(User.username == "hal"))
    secrets = {"password": PASSWORD, "register CSRF token": register_token, "export CSRF token": export_token,
               "session cookie": client.get_cookie("session", domain="held.example.org").value}
    queued = {queue: take_all(rabbitmq, HELD_VHOST, queue) for queue in QUEUES}
    return queued, user_id, secrets


def test_each_task_waits_in_the_queue_of_its_route(held_messages):
    queued, _, _ = held_messages
    assert {queue: [m.headers["task"] for m in messages] for queue, messages in queued.items()} == {
        "celery": ["app.tasks.ping"],
        "exports": ["app.tasks.export_posts"],
        "mail": ["app.tasks.send_welcome_email"],
    }
    for queue in QUEUES:
        (message,) = queued[queue]
        assert message.delivery_info["routing_key"] == queue
        assert message.properties["delivery_mode"] == 2  # persistent: survives a broker restart


def opened(app, token: str) -> dict:
    """The context as the app's worker would open it (sealed with the app's secret)."""
    return app.extensions["flask_celery_request"].sealer.open(token)


def test_the_sealed_context_travels_in_an_amqp_header_not_in_the_arguments(held_app, held_messages):
    queued, user_id, _ = held_messages
    (export,) = queued["exports"]
    (welcome,) = queued["mail"]
    for message, path, args in ((export, "/export_posts", [user_id]), (welcome, "/auth/register", None)):
        token = message.headers[CONTEXT_HEADER]
        assert token.startswith("fcr1.")
        context = opened(held_app, token)
        carried = context["e"]
        assert (carried["HTTP_HOST"], carried["wsgi.url_scheme"], carried["PATH_INFO"]) == \
            ("held.example.org", "https", path)
        assert "HTTP_COOKIE" not in carried
        body = message.body.decode()
        task_args, task_kwargs, _embed = json.loads(body)
        if args is not None:
            assert task_args == args
        assert len(task_args) == 1 and task_kwargs == {}
        assert CONTEXT_HEADER not in body and token not in body
    assert opened(held_app, export.headers[CONTEXT_HEADER])["u"].partition(":")[0] == str(user_id)
    registration = opened(held_app, welcome.headers[CONTEXT_HEADER])
    assert dict(registration["f"]) == {"username": "hal", "email": "hal@example.com"}


def test_nothing_of_the_request_is_readable_in_rabbitmq(held_app, held_messages):
    queued, _, secrets = held_messages
    everything = b"".join(raw(message) for messages in queued.values() for message in messages)
    # The registration form travelled (opened above), minus its secrets; sealed, none of it reads.
    visible = {"email": "hal@example.com", "host": "held.example.org", "register path": "/auth/register",
               "export path": "/export_posts", "user agent": "Werkzeug/"}
    leaked = [name for name, value in {**secrets, **visible}.items() if value.encode() in everything]
    assert leaked == []
    assert everything.count(b"fcr1.") == 3  # one sealed context per message

