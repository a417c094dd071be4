"""How the app's workers live with a broker and result backend that go away.

A worker must survive losing the Redis broker while it holds unacknowledged messages.

When the broker connection drops, Celery's consumer (``on_connection_error_after_connected``)
first calls ``connection.collect()``, which detaches the kombu transport from its
connection (``transport.client = None``) even though closing the default channel failed
(Redis is gone), and then ``connection.close()``, which closes that channel again. If the
worker holds unacknowledged messages (an ETA task such as a delayed welcome email, or a
running ``acks_late`` task), the channel tries to put them back on the queue, builds a
new Redis connection pool from ``transport.client``, and fails with ``AttributeError:
'NoneType' object has no attribute 'hostname'``. That is not a connection error, so the
consumer does not reconnect: the worker logs "Unrecoverable error" and exits.

Raising a Redis ``ConnectionError`` there instead makes the close path treat it as what
it is, a broker that cannot be reached: the error is ignored and the consumer reconnects
with its usual backoff. The messages are not lost: Redis keeps them in the unacked set
and kombu hands them out again after the visibility timeout.
"""
from __future__ import annotations

from functools import wraps

from celery.signals import celeryd_init


def survive_broker_loss_with_unacked_messages() -> None:
    """Patch kombu's Redis channel once (in the worker; harmless elsewhere)."""
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    channel = kombu_redis.Channel
    original = channel._connparams
    if getattr(original, "_detached_transport_is_a_connection_error", False):
        return

    @wraps(original)
    def _connparams(self, *args, **kwargs):
        transport = self.connection
        if transport is None or getattr(transport, "client", None) is None:
            raise RedisConnectionError("the broker connection of this channel is closed")
        return original(self, *args, **kwargs)

    _connparams._detached_transport_is_a_connection_error = True
    channel._connparams = _connparams


@celeryd_init.connect
def _patient_result_backend_in_workers(conf=None, **_kwargs) -> None:
    """Web requests give up on a dead Redis within a second; workers keep retrying
    result writes as long as Celery's default policy does."""
    if conf is not None:
        conf.result_backend_transport_options = {
            **(conf.result_backend_transport_options or {}),
            "retry_policy": {"max_retries": 20, "interval_start": 0, "interval_step": 1, "interval_max": 1},
        }


@celeryd_init.connect
def _patient_replies_in_workers(conf=None, instance=None, **_kwargs) -> None:
    """A web request gives up on a silent broker within a second or two; a worker waits
    ``WORKER_BROKER_SOCKET_TIMEOUT`` for each reply, so a slow moment is not an outage,
    and still never waits forever on a frozen one (it reconnects when it answers again)."""
    flask_app = getattr(getattr(instance, "app", None), "flask_app", None)
    if conf is None or flask_app is None:
        return
    timeout = float(flask_app.config["WORKER_BROKER_SOCKET_TIMEOUT"])
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        **dict.fromkeys(("socket_timeout", "socket_connect_timeout", "read_timeout", "write_timeout"), timeout),
    }
    conf.redis_socket_timeout = conf.redis_socket_connect_timeout = timeout
    conf.broker_connection_timeout = timeout


@celeryd_init.connect
def _survive_broker_loss(**_kwargs) -> None:
    """Reconnect, rather than exit, when Redis goes away while messages are unacked."""
    survive_broker_loss_with_unacked_messages()
