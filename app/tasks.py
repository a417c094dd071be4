"""Celery tasks: thin wrappers that call plain functions and report."""
from __future__ import annotations

from celery.signals import task_failure
from flask_celery_request import ContextRefused

from app.extensions import celery, db
from app.models import finish_task

#: What the user reads on a job whose carried request the worker refused.
CONTEXT_REFUSED_MESSAGE = "This job could not be verified and did not run. Please start it again."


@celery.task(bind=True)
def ping(self) -> str:
    """Answer "pong" and mark the Task row done: proves the worker reaches the database."""
    finish_task(self.request.id)
    return "pong"


@celery.task(bind=True, max_retries=None)
def export_posts(self, user_id: int) -> str:
    """Export a user's posts to a file and email them the links (runs in their request).

    A transient SMTP failure keeps the file and retries the email with backoff, up to
    MAIL_RETRY_ATTEMPTS in all; then the export ends in FAILURE, still downloadable."""
    from flask import current_app

    from app.email import backoff_seconds, is_transient
    from app.exports import ExportEmailError, run_export

    config = current_app.config
    may_retry = self.request.retries + 1 < config["MAIL_RETRY_ATTEMPTS"]
    try:
        return run_export(self.request.id, user_id, celery_task=self, retry_email=may_retry)
    except ExportEmailError as exc:
        if may_retry and exc.__cause__ is not None and is_transient(exc.__cause__):
            countdown = backoff_seconds(self.request.retries, config["MAIL_RETRY_BACKOFF"],
                                        config["MAIL_RETRY_BACKOFF_MAX"])
            raise self.retry(exc=exc, countdown=countdown)
        raise


@celery.task
def cleanup_exports() -> dict:
    """Remove expired exports (celery beat runs this hourly; ``flask cleanup-exports`` too)."""
    from dataclasses import asdict

    from app.exports import cleanup_exports as cleanup

    return asdict(cleanup())


@celery.task(bind=True, max_retries=None)
def send_welcome_email(self, delivery_id: int) -> str:
    """Greet a new user, with links on the host they registered from; retried with
    backoff on transient SMTP errors up to MAIL_RETRY_ATTEMPTS, recorded when it fails."""
    from flask import current_app

    from app import welcome
    from app.email import backoff_seconds, describe_failure, is_transient

    delivery = welcome.claim(delivery_id)
    if delivery is None:
        return "not pending"
    try:
        sent = welcome.send_welcome(delivery)
    except Exception as exc:
        db.session.rollback()
        reason = describe_failure(exc)
        config = current_app.config
        if is_transient(exc) and delivery.attempts < config["MAIL_RETRY_ATTEMPTS"]:
            welcome.record_failure(delivery_id, reason, final=False)
            countdown = backoff_seconds(delivery.attempts - 1, config["MAIL_RETRY_BACKOFF"],
                                        config["MAIL_RETRY_BACKOFF_MAX"])
            raise self.retry(exc=exc, countdown=countdown)
        welcome.record_failure(delivery_id, reason, final=True)
        return f"failed: {reason}"
    return "sent" if sent else "skipped: the user was deleted"


@celery.task
def requeue_stalled_emails() -> int:
    """Re-send welcome emails whose enqueue failed (celery beat runs this every 5 minutes)."""
    from app.welcome import requeue_stalled_deliveries

    return requeue_stalled_deliveries()


@task_failure.connect
def _after_a_refused_context(sender=None, task_id=None, exception=None, args=None, **_kwargs) -> None:
    """A task refused for its request context ran nothing (the extension logged why):
    end its Task row with a reason instead of leaving it running; a welcome email
    forgets the context and stays pending, for the next re-send, so it is not lost."""
    if not isinstance(exception, ContextRefused) or celery.flask_app is None:
        return
    from app import welcome

    with celery.flask_app.app_context():
        if getattr(sender, "name", None) == send_welcome_email.name and args:
            welcome.forget_request_context(args[0])
        else:
            finish_task(task_id, error=CONTEXT_REFUSED_MESSAGE)
