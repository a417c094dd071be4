"""Celery tasks: thin wrappers that call plain functions and report."""
from __future__ import annotations

from app.extensions import celery, db
from app.models import Task, TaskState, utcnow


def finish_task(task_id: str, *, error: str | None = None) -> Task | None:
    """Mark a Task row finished (SUCCESS, or FAILURE with ``error``); None if it is gone."""
    row = db.session.get(Task, task_id)
    if row is None:
        return None
    row.state = TaskState.FAILURE if error else TaskState.SUCCESS
    row.progress = row.progress if error else 100
    row.error = error
    row.finished = utcnow()
    db.session.commit()
    return row


@celery.task(bind=True)
def ping(self) -> str:
    """Answer "pong" and mark the Task row done: proves the worker reaches the database."""
    finish_task(self.request.id)
    return "pong"


@celery.task(bind=True)
def export_posts(self, user_id: int) -> str:
    """Export a user's posts to a file and email them the links (runs in their request)."""
    from app.exports import run_export

    return run_export(self.request.id, user_id, celery_task=self)


@celery.task
def cleanup_exports() -> dict:
    """Remove expired exports (celery beat runs this hourly; ``flask cleanup-exports`` too)."""
    from dataclasses import asdict

    from app.exports import cleanup_exports as cleanup

    return asdict(cleanup())


@celery.task
def send_email_task(subject: str, recipients: list[str], text_body: str, html_body: str,
                    attachments: list[dict]) -> None:
    from app.email import decode_attachment, send_email

    send_email(subject, recipients, text_body, html_body,
               [decode_attachment(a) for a in attachments], sync=True)
