"""Starting the background jobs a user watches: the Task row first, then the message."""
from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext
from flask_celery_request import ContextCaptureError

from app.extensions import db
from app.i18n import N_, translate
from app.models import Task, TaskState, User, utcnow

#: Why a task ended before it started, as stored on its row (msgids, shown translated).
NOT_CARRIED = N_("The request could not be carried to the background job.")
SERVICE_UNAVAILABLE = N_("The background service is unavailable; the task was not started.")


class TaskNotStarted(RuntimeError):
    """The broker refused or could not be reached: the job was not enqueued."""


class TaskAlreadyRunning(RuntimeError):
    """The user already has an unfinished task of this kind."""


def launch_task(user: User, celery_task, description: str, *args) -> Task:
    """Record a Task row for ``user``, commit it, then enqueue ``celery_task(*args)``.
    ``description`` is stored as given: an English msgid marked with ``N_``.

    Commits the session. Raises :class:`TaskAlreadyRunning` if the user has an
    unfinished task of this kind (the database enforces it).

    The row is committed before the message is sent, so the worker always finds it;
    if sending fails the row is marked FAILURE (never left running) and
    :class:`TaskNotStarted` is raised, or the carrier's :class:`ContextCaptureError`
    when the request itself could not be carried (the client's to fix, not the broker).
    """
    # End any read transaction first: on SQLite a transaction that read, then writes
    # after another writer committed, fails at once with "database is locked".
    db.session.commit()
    row = Task(
        id=str(uuid4()),
        name=celery_task.name.rsplit(".", 1)[-1],
        description=description,
        user_id=user.id,
        state=TaskState.PENDING,
    )
    db.session.add(row)
    try:
        db.session.commit()
    except sa.exc.IntegrityError:
        db.session.rollback()
        running = user.task_in_progress(row.name)
        if running is None:
            raise  # not the one-running-task rule: a real integrity problem
        raise TaskAlreadyRunning(gettext(
            "Already in progress: %(task)s (%(percent)d%%). Please wait for it to finish.",
            task=translate(running.description).rstrip(".…"), percent=running.progress,
        )) from None
    try:
        celery_task.apply_async(args=args, task_id=row.id)
    except Exception as exc:
        db.session.rollback()
        not_carried = isinstance(exc, ContextCaptureError)
        row.state = TaskState.FAILURE
        # The stored reason is a whole msgid; the carrier's own words go to the log and to
        # the view, which shows them to the user who sent the request.
        row.error = NOT_CARRIED if not_carried else SERVICE_UNAVAILABLE
        row.finished = utcnow()
        db.session.commit()
        if not_carried:
            current_app.logger.warning("Could not carry the request of %s for %s: %s", row.name, user, exc)
            raise
        current_app.logger.error("Could not enqueue %s for %s: %r", row.name, user, exc)
        raise TaskNotStarted(row.error) from exc
    return row


def take_lease(task_id: str, seconds: float) -> str | float:
    """Take the lease on an unfinished task's row for ``seconds``: the new owner's token,
    or, when another run holds it, the seconds until its lease ends."""
    db.session.commit()  # a fresh write transaction (see launch_task)
    token, now = uuid4().hex, utcnow()
    taken = db.session.execute(
        sa.update(Task)
        .where(Task.id == task_id, Task.finished.is_(None),
               sa.or_(Task.lease_expires.is_(None), Task.lease_expires <= now))
        .values(lease_owner=token, lease_expires=now + timedelta(seconds=seconds))
    ).rowcount
    db.session.commit()
    if taken:
        return token
    row = db.session.get(Task, task_id)
    if row is None or row.lease_expires is None:
        return 0.0
    return max(0.0, (row.lease_expires - now).total_seconds())


def renew_lease(connection: sa.Connection, task_id: str, token: str, seconds: float) -> None:
    """Extend this run's lease, on ``connection`` (the progress reports' own)."""
    connection.execute(sa.update(Task).where(Task.id == task_id, Task.lease_owner == token)
                       .values(lease_expires=utcnow() + timedelta(seconds=seconds)))


def release_lease(task_id: str, token: str) -> None:
    db.session.execute(sa.update(Task).where(Task.id == task_id, Task.lease_owner == token)
                       .values(lease_owner=None, lease_expires=None))
    db.session.commit()
