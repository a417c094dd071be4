"""Celery tasks: thin wrappers that call plain functions and report."""
from __future__ import annotations

from celery.signals import task_failure
from flask_celery_request import ContextRefused

from app import outbox, password_reset, welcome
from app.extensions import celery, db
from app.i18n import N_
from app.models import finish_task

#: What the user reads on a job whose carried request the worker refused.
CONTEXT_REFUSED_MESSAGE = N_("This job could not be verified and did not run. Please start it again.")


@celery.task(bind=True)
def ping(self) -> str:
    """Answer "pong" and mark the Task row done: proves the worker reaches the database."""
    finish_task(self.request.id)
    return "pong"


@celery.task(bind=True, max_retries=None)
def export_posts(self, user_id: int) -> str:
    """Export a user's posts to a file and email them the links (runs in their request).

    A transient SMTP failure keeps the file and retries the email with backoff, up to
    MAIL_RETRY_ATTEMPTS in all; then the export ends in FAILURE, still downloadable.
    A copy of the message that finds another run working on the export retries once
    that run's lease has ended, and then finds it done, or takes it over."""
    from app.exports import ExportEmailError, ExportLeased, run_export

    try:
        return run_export(self.request.id, user_id, celery_task=self)
    except ExportLeased as exc:
        raise self.retry(exc=exc, countdown=exc.retry_in + 1)
    except ExportEmailError as exc:
        if exc.retry_in is not None:
            raise self.retry(exc=exc, countdown=exc.retry_in)
        raise


@celery.task
def cleanup_exports() -> dict:
    """Remove expired exports (celery beat runs this hourly; ``flask cleanup-exports`` too)."""
    from dataclasses import asdict

    from app.exports import cleanup_exports as cleanup

    return asdict(cleanup())


@celery.task(bind=True, max_retries=None)
def send_welcome_email(self, delivery_id: int) -> str:
    """Greet a new user, with links on the host they registered from."""
    return _deliver(self, delivery_id, welcome.send_welcome)


@celery.task(bind=True, max_retries=None)
def send_password_reset_email(self, delivery_id: int) -> str:
    """Mail a password-reset link, on the host the reset was asked from."""
    return _deliver(self, delivery_id, password_reset.send_reset)


def _deliver(task, delivery_id: int, send) -> str:
    """Claim an outbox row and ``send(delivery)`` it; transient SMTP errors are retried
    with backoff up to MAIL_RETRY_ATTEMPTS, and the failure is recorded when it is final."""
    from flask import current_app

    from app.email import backoff_seconds, describe_failure, is_transient

    delivery = outbox.claim(delivery_id)
    if delivery is None:
        return "not pending"
    try:
        sent = send(delivery)
    except Exception as exc:
        db.session.rollback()
        reason = describe_failure(exc)
        config = current_app.config
        if is_transient(exc) and delivery.attempts < config["MAIL_RETRY_ATTEMPTS"]:
            outbox.record_failure(delivery_id, reason, final=False)
            countdown = backoff_seconds(delivery.attempts - 1, config["MAIL_RETRY_BACKOFF"],
                                        config["MAIL_RETRY_BACKOFF_MAX"])
            raise task.retry(exc=exc, countdown=countdown)
        outbox.record_failure(delivery_id, reason, final=True)
        return f"failed: {reason}"
    return "sent" if sent else "skipped"


@celery.task
def requeue_stalled_emails() -> int:
    """Re-send welcome and reset emails whose enqueue failed (celery beat runs this every
    5 minutes)."""
    return welcome.requeue_stalled_deliveries() + password_reset.requeue_stalled()


_OUTBOX_TASKS = {send_welcome_email.name, send_password_reset_email.name}


@task_failure.connect
def _after_a_refused_context(sender=None, task_id=None, exception=None, args=None, **_kwargs) -> None:
    """A task refused for its request context ran nothing (the extension logged why):
    end its Task row with a reason instead of leaving it running; an outbox email
    forgets the context and stays pending, for the next re-send, so it is not lost."""
    if not isinstance(exception, ContextRefused) or celery.flask_app is None:
        return
    with celery.flask_app.app_context():
        if getattr(sender, "name", None) in _OUTBOX_TASKS and args:
            outbox.forget_request_context(args[0])
        else:
            finish_task(task_id, error=CONTEXT_REFUSED_MESSAGE)
