"""The microblog's Celery policy: what ``app.config["CELERY"]`` holds before the
extension reads it. Queues, routes, beat, acknowledgement, prefetch and timeouts are
the app's choices, not the extension's."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kombu import Queue

from app.logs import WORKER_LOG_FORMAT, WORKER_TASK_LOG_FORMAT

#: Quick give-up for web processes: a request must not hang on a dead broker or backend.
_IMPATIENT = {"max_retries": 1, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5}


def celery_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's settings (lower-case names) from the Flask config; ``CELERY`` entries win."""
    visibility_timeout = int(config.get("BROKER_VISIBILITY_TIMEOUT", 7200))
    # Workers hand back messages unacknowledged past the visibility timeout when they
    # start, then every unacked_restore_interval x unacked_restore_throttle seconds:
    # kombu's 10 x 10 whatever the timeout, so with a timeout of a few seconds a crashed
    # worker's task would wait up to 100 s for a running worker to take it back. Look every
    # tenth of the timeout instead, between once a second and every 100 s.
    restore_every = max(1, min(100, visibility_timeout // 10))
    restore_interval = min(10, restore_every)
    # A broker that hangs must not hang a request: each reply is waited for this long
    # (Redis: socket timeouts of broker and backend; RabbitMQ: read and write timeouts,
    # and publisher confirms, since a publish is otherwise only a write into a buffer).
    reply_timeout = float(config.get("BROKER_SOCKET_TIMEOUT", 0.5))
    settings = {
        "broker_url": config["CELERY_BROKER_URL"],
        "result_backend": config["CELERY_RESULT_BACKEND"],
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": False,
        "result_expires": 7 * 24 * 3600,
        "task_track_started": True,
        "task_time_limit": config.get("CELERY_TASK_TIME_LIMIT"),
        "task_soft_time_limit": config.get("CELERY_TASK_SOFT_TIME_LIMIT"),
        # At-least-once: a task is acknowledged when it ends, and one whose worker died
        # (SIGKILL, OOM) goes back to the queue; unacknowledged messages return after the
        # visibility timeout (Redis), which must exceed the longest countdown/eta we use.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": restore_every // restore_interval,
            "socket_timeout": reply_timeout,
            "socket_connect_timeout": reply_timeout,
            "read_timeout": reply_timeout,
            "write_timeout": reply_timeout,
            "confirm_publish": True,
            "health_check_interval": float(config.get("BROKER_HEALTH_CHECK_INTERVAL", 10.0)),
        },
        "broker_connection_retry_on_startup": True,
        # Connecting (TCP and the AMQP handshake) gets two reply timeouts: a publish that
        # met a silent broker reconnects once before it gives up.
        "broker_connection_timeout": 2 * reply_timeout,
        "broker_heartbeat": float(config.get("BROKER_HEARTBEAT", 10.0)),
        "redis_socket_timeout": reply_timeout,
        "redis_socket_connect_timeout": reply_timeout,
        "task_publish_retry_policy": _IMPATIENT,
        # Sending subscribes to the task's result; don't spend Celery's default ~20 s on
        # it. Workers get a patient policy back when they start (app.broker).
        "result_backend_transport_options": {"retry_policy": _IMPATIENT},
        "worker_hijack_root_logger": True,
        # Every line says which click it belongs to (app.logs gives the records their id).
        "worker_log_format": WORKER_LOG_FORMAT,
        "worker_task_log_format": WORKER_TASK_LOG_FORMAT,
        "enable_utc": True,
        "timezone": "UTC",
        # Exports and emails have queues of their own, so each can get its own workers
        # (`worker -Q exports`, `-Q mail`); a worker started without -Q consumes all three.
        "task_default_queue": "celery",
        "task_queues": tuple(Queue(name) for name in ("celery", "exports", "mail")),
        "task_routes": {
            "app.tasks.export_posts": {"queue": "exports"},
            "app.tasks.send_welcome_email": {"queue": "mail"},
        },
        "beat_schedule": {
            "cleanup-exports": {"task": "app.tasks.cleanup_exports",
                                "schedule": float(config.get("EXPORT_CLEANUP_INTERVAL", 3600.0))},
            "requeue-stalled-emails": {"task": "app.tasks.requeue_stalled_emails",
                                       "schedule": float(config.get("EMAIL_REQUEUE_INTERVAL", 300.0))},
        },
    }
    settings.update(config.get("CELERY") or {})
    return settings
