"""Celery tasks: thin wrappers that look up their Task row and call plain functions."""
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
