"""Exporting a user's posts to a JSON file: streamed, so memory stays flat at any size.

The file goes to the app's export storage (app/storage.py): ``EXPORTS_DIR``, or an
S3-compatible store when web and workers share no disk.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fnmatch import fnmatch

import sqlalchemy as sa
from flask import current_app
from flask_babel import get_timezone

from app.extensions import db
from app.i18n import N_
from app.jobs import release_lease, renew_lease, take_lease
from app import outbox
from app.models import DeliveryStatus, EmailDelivery, Post, Task, TaskState, finish_task, utcnow
from app.storage import ExportStorage, export_storage

EXPORT_TASK_NAME = "export_posts"
#: JSON string literal for a str, non-ASCII kept as is (the C encoder json.dumps uses).
_encode_string = json.encoder.encode_basestring
_STREAM_BATCH = 2000


class ExportFailed(Exception):
    """An export could not be completed; the message is fit to show the user."""


#: The names export_file_name gives, for the cleanup's orphan sweep.
_EXPORT_FILE_PATTERN = "posts-*.json"
#: Stored files whose tasks the cleanup looks up in one query.
_CLEANUP_BATCH = 500


def export_name(task: Task) -> str | None:
    """The name of an export task's finished file in the export storage, if it has one
    (the file may since have expired: ask :func:`export_exists`)."""
    if task.name != EXPORT_TASK_NAME or not task.result_location:
        return None
    return task.result_location


def export_exists(task: Task) -> bool:
    """Whether the export task's file is there to download."""
    name = export_name(task)
    return name is not None and export_storage().exists(name)


def export_file_name(task_id: str) -> str:
    return f"posts-{task_id}.json"


def _iso_timestamp_column() -> sa.ColumnElement[str]:
    """The post's UTC timestamp as ``2026-11-22T08:00:00Z``, formatted by the database."""
    if db.engine.dialect.name == "sqlite":
        return sa.func.strftime("%Y-%m-%dT%H:%M:%SZ", Post.timestamp)
    if db.engine.dialect.name == "postgresql":
        return sa.func.to_char(Post.timestamp, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    raise ExportFailed(f"exports do not support the {db.engine.dialect.name} database yet")


def write_posts_export(user_id: int, name: str, progress: Callable[[int, int], None],
                       storage: ExportStorage | None = None) -> int:
    """Write the user's posts, oldest first, as ``{"posts": [...]}`` to the file ``name``
    of ``storage`` (the app's export storage unless given).

    Rows are streamed from the database in batches of ``_STREAM_BATCH`` and written a
    batch at a time (memory stays flat at any size); the file appears only when
    complete: a reader never sees half a file. ``progress(done, total)`` is called
    after every batch and at the end; it decides itself how often to report.
    """
    total = db.session.scalar(sa.select(sa.func.count(Post.id)).where(Post.user_id == user_id)) or 0
    # Core rows on the session's connection, no ORM loading. yield_per implies
    # stream_results: a server-side cursor on PostgreSQL (psycopg's named cursor), fetched
    # _STREAM_BATCH rows at a time. On the statement: Connection.execution_options() would
    # change the session's connection in place, turning the export's later UPDATE into
    # "DECLARE ... CURSOR FOR UPDATE ...", a syntax error on PostgreSQL.
    rows = db.session.connection().execute(
        sa.select(Post.body, _iso_timestamp_column())
        .where(Post.user_id == user_id)
        .order_by(Post.timestamp, Post.id)
        .execution_options(yield_per=_STREAM_BATCH)
    )
    storage = storage or export_storage()
    done = 0
    try:
        with storage.open_writer(name) as out:
            out.write('{"posts": [')
            separator = ""
            for batch in rows.partitions():
                out.write(separator)
                out.write(", ".join([f'{{"body": {_encode_string(body)}, "timestamp": "{timestamp}"}}'
                                     for body, timestamp in batch]))
                separator = ", "
                done += len(batch)
                progress(done, total)
            out.write("]}\n")
    except BaseException:
        rows.close()
        raise
    progress(done, done)
    return done


class ProgressReporter:
    """Records progress on the Task row and in Celery's state, at most once per
    percent and half-second (and always at 100), never once per post; renews the
    run's lease on the row with each report, and at least every third of its length."""

    def __init__(self, task_id: str, celery_task=None, min_interval: float = 0.5,
                 lease: tuple[str, float] | None = None) -> None:
        self.task_id = task_id
        self.celery_task = celery_task
        self.min_interval = min_interval
        self.lease = lease
        self.percent = -1
        self.renewed_at = time.monotonic()
        self.reported_at = float("-inf")
        self.reports = 0

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        now = time.monotonic()
        if percent == self.percent or (percent < 100 and now - self.reported_at < self.min_interval):
            if self.lease is not None and now - self.renewed_at > self.lease[1] / 3:
                self._renew_lease()
            return
        self.percent, self.reported_at = percent, now
        self.record(percent, done, total)

    def _renew_lease(self) -> None:
        with db.engine.begin() as connection:
            renew_lease(connection, self.task_id, *self.lease)
        self.renewed_at = time.monotonic()

    def record(self, percent: int, done: int = 0, total: int | None = None) -> None:
        self.reports += 1
        # A connection of its own: the export's read transaction stays open meanwhile.
        with db.engine.begin() as connection:
            connection.execute(
                sa.update(Task)
                .where(Task.id == self.task_id, Task.finished.is_(None))
                .values(progress=percent, state=TaskState.PROGRESS, done=done, total=total)
            )
            if self.lease is not None:
                renew_lease(connection, self.task_id, *self.lease)
                self.renewed_at = time.monotonic()
        if self.celery_task is not None and self.task_id:
            self.celery_task.update_state(task_id=self.task_id, state=TaskState.PROGRESS,
                                          meta={"progress": percent, "done": done, "total": total})


def export_kept_through(task: Task) -> date:
    """The last whole day, in the reader's time zone, on which ``task``'s file is sure to
    be kept: the cleanup may remove it from ``EXPORT_RETENTION_DAYS`` after it finished
    (after now, for an export whose email is being written), during the day after."""
    removable = (task.finished or utcnow()) + timedelta(days=current_app.config["EXPORT_RETENTION_DAYS"])
    return removable.astimezone(get_timezone()).date() - timedelta(days=1)


@dataclass
class CleanupReport:
    files_removed: int = 0
    temporary_files_removed: int = 0
    stale_tasks_failed: int = 0


def cleanup_exports(now: datetime | None = None) -> CleanupReport:
    """Remove exports older than ``EXPORT_RETENTION_DAYS``, what writers that died left
    behind (temporary files, unfinished uploads) after a day, and fail tasks that have
    been "running" far longer than any task may run.

    The files are found by listing the storage, and their tasks looked up by name, not by
    asking about every task that ever had a file: the work grows with the exports kept,
    not with the history.
    """
    now = now or utcnow()
    report = CleanupReport()
    storage = export_storage()
    expired_before = now - timedelta(days=current_app.config["EXPORT_RETENTION_DAYS"])
    stored = [found for found in storage.list_files() if fnmatch(found.name, _EXPORT_FILE_PATTERN)]
    for start in range(0, len(stored), _CLEANUP_BATCH):
        batch = stored[start:start + _CLEANUP_BATCH]
        owners = {location: (name, finished) for location, name, finished in db.session.execute(
            sa.select(Task.result_location, Task.name, Task.finished)
            .where(Task.result_location.in_([found.name for found in batch])))}
        for found in batch:
            if found.name in owners:
                task_name, finished = owners[found.name]
                expired = task_name == EXPORT_TASK_NAME and finished is not None and finished < expired_before
            else:  # no task points at it (a crash between writing and recording): gone after retention
                expired = found.modified < expired_before
            if expired:
                storage.delete(found.name)
                report.files_removed += 1
    report.temporary_files_removed = storage.discard_unfinished(now - timedelta(hours=24))
    limit = timedelta(seconds=current_app.config["CELERY_TASK_TIME_LIMIT"] + 600)
    stale = db.session.scalars(sa.select(Task).where(Task.finished.is_(None), Task.created < now - limit))
    for task in stale:
        task.state = TaskState.FAILURE
        task.error = N_("The task did not finish in time and was stopped. Please try again.")
        task.finished = now
        report.stale_tasks_failed += 1
    db.session.commit()
    return report


def send_export_email(user, task: Task, name: str, count: int) -> bool:
    """Email the user their links (and the file ``name`` when small enough), in the
    language of the click that started the export; True if attached."""
    from flask import render_template, url_for
    from flask_babel import gettext

    from app.email import Attachment, send_email
    from app.i18n import language_of

    storage = export_storage()
    size = storage.size(name)
    attach = size <= current_app.config["MAIL_MAX_ATTACHMENT_BYTES"]
    context = dict(
        user=user,
        count=count,
        size=size,
        attached=attach,
        download_url=url_for("main.download_export", task_id=task.id, _external=True),
        profile_url=url_for("main.user", username=user.username, _external=True),
        kept_through=export_kept_through(task),
    )
    attachments = []
    if attach:
        with storage.open_reader(name) as exported:
            content = exported.read()
        attachments.append(Attachment(f"{user.username}-posts.json", "application/json", content))
    with language_of(user):
        send_email(
            gettext("[Microblog] Your posts are ready"),
            [user.email],
            render_template("email/export_posts.txt", **context),
            render_template("email/export_posts.html", **context),
            attachments=attachments,
        )
    return attach


class ExportLeased(Exception):
    """Another run holds this export's lease (a redelivered message while the first
    still works, or before its lease has ended): try again in :attr:`retry_in` seconds."""

    def __init__(self, task_id: str, retry_in: float) -> None:
        super().__init__(f"export {task_id} is leased to another run for {retry_in:.0f} s more")
        self.retry_in = retry_in


def run_export(task_id: str, user_id: int, celery_task=None) -> str:
    """The whole job: write the file, email the user once, record it.

    Idempotent by the Task row and its email's outbox row: an export already finished
    is not written or emailed again, one whose file is written only sends the email,
    and one whose email was claimed is never emailed again. While a run works it holds
    a lease on the row (``EXPORT_LEASE_SECONDS``, renewed as it reports progress):
    another run raises :class:`ExportLeased`. Any failure ends the row in FAILURE with
    a message fit for the user and re-raises, except a transient email failure with
    attempts left: then the row stays unfinished, says the email is delayed, and
    :class:`ExportEmailError` says when to retry.
    """
    from app.models import User

    task = db.session.get(Task, task_id)
    if task is None:
        current_app.logger.warning("Export %s has no Task row; nothing to do", task_id)
        return "missing"
    if task.finished is not None:
        current_app.logger.info("Export %s already ended in %s; not running it again", task_id, task.state)
        return "already done"
    user = db.session.get(User, user_id)
    if user is None or task.user_id != user_id:
        finish_task(task_id, error=N_("The account for this export no longer exists."))
        return "no user"
    lease_seconds = float(current_app.config["EXPORT_LEASE_SECONDS"])
    token = take_lease(task_id, lease_seconds)
    if not isinstance(token, str):
        raise ExportLeased(task_id, token)
    try:
        task = db.session.get(Task, task_id)
        if task.state == TaskState.PENDING:
            task.state = TaskState.STARTED
        db.session.commit()
        return _export_and_notify(task_id, user, celery_task, (token, lease_seconds))
    except ExportEmailError as exc:
        db.session.rollback()
        if exc.retry_in is not None:
            current_app.logger.warning("Export %s: emailing %s failed (%s); will retry in %.0f s",
                                       task_id, user.email, exc, exc.retry_in)
            _set_error(task_id, EMAIL_DELAYED)
            raise
        current_app.logger.error("Export %s for %s: giving up on the email: %s", task_id, user, exc)
        finish_task(task_id, error=_message_for_user(exc))
        raise
    except Exception as exc:
        db.session.rollback()
        current_app.logger.exception("Export %s for %s failed", task_id, user)
        finish_task(task_id, error=_message_for_user(exc))
        raise
    finally:
        db.session.rollback()
        release_lease(task_id, token)


EMAIL_DELAYED = N_("Your export is ready to download. We could not email you yet and will try again.")


def _set_error(task_id: str, message: str) -> None:
    db.session.execute(sa.update(Task).where(Task.id == task_id, Task.finished.is_(None)).values(error=message))
    db.session.commit()


def count_exported_posts(name: str) -> int:
    """Posts in a finished export file: each starts with ``{"body": `` and, JSON-escaped,
    no body can contain that sequence."""
    marker, count, tail = b'{"body": ', 0, b""
    with export_storage().open_reader(name) as exported:
        while chunk := exported.read(1 << 20):
            block = tail + chunk
            count += block.count(marker)
            tail = block[-(len(marker) - 1):]  # shorter than a marker: nothing counted twice
    return count


class ExportWriteError(ExportFailed):
    pass


class ExportEmailError(ExportFailed):
    """The email could not be sent; ``retry_in`` seconds when another attempt is due."""

    def __init__(self, message: str, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.retry_in = retry_in


def _message_for_user(exc: Exception) -> str:
    """What the Task row says went wrong: a msgid, stored in English and shown translated."""
    if isinstance(exc, ExportWriteError):
        return N_("We could not write your export file. Please try again later.")
    if isinstance(exc, ExportEmailError):
        return N_("Your export is ready to download from this site, but we could not send you the email "
                  "about it.")
    return N_("Something went wrong while exporting your posts. Please try again later.")


#: The email that says an export is ready, an outbox row tied to the task.
EXPORT_EMAIL = "export"
MAIL_MAY_HAVE_GONE = "the worker stopped while sending this email; it may not have arrived"


def _export_and_notify(task_id: str, user, celery_task, lease: tuple[str, float]) -> str:
    from app import audit

    name = export_file_name(task_id)
    storage = export_storage()
    task = db.session.get(Task, task_id)
    if task.result_location == name and storage.exists(name):
        count = count_exported_posts(name)  # written by an earlier attempt
    else:
        try:
            progress = ProgressReporter(task_id, celery_task, lease=lease)
            count = write_posts_export(user.id, name, progress, storage)
        except OSError as exc:
            raise ExportWriteError(f"could not write {storage.location(name)}: {exc}") from exc
        task = db.session.get(Task, task_id)
        task.result_location = name
        task.done = task.total = count
        task.result_bytes = storage.size(name)
        db.session.commit()
    delivery = _export_delivery(task, user)
    if delivery.status == DeliveryStatus.SENDING:
        # This run holds the lease, so the run that claimed the email has died, before
        # or after the SMTP server took it: never risk a second copy.
        outbox.finish(delivery.id, DeliveryStatus.FAILED, MAIL_MAY_HAVE_GONE)
        current_app.logger.error("Export %s: the email to %s was being sent when its worker stopped; "
                                 "not sending it again", task_id, user.email)
    elif delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
        with db.engine.begin() as connection:
            renew_lease(connection, task_id, *lease)  # the SMTP conversation may take a while
        claimed = outbox.claim(delivery.id)
        if claimed is not None:
            attached = _send(claimed, user, task, name, count)
            audit.record("export_posts", {"posts": count, "bytes": storage.size(name), "attached": attached},
                         user_id=user.id)
    elif delivery.status == DeliveryStatus.FAILED:
        raise ExportEmailError(f"could not email {user.email}: {delivery.last_error}")
    finish_task(task_id)
    return name


def _export_delivery(task: Task, user) -> EmailDelivery:
    """The export's email, promised once per task (the unique task_id decides)."""
    delivery = db.session.scalar(sa.select(EmailDelivery).where(EmailDelivery.task_id == task.id))
    if delivery is None:
        delivery = EmailDelivery(kind=EXPORT_EMAIL, user_id=user.id, recipient=user.email, task_id=task.id,
                                 status=DeliveryStatus.PENDING, attempts=0)
        db.session.add(delivery)
        db.session.commit()
    return delivery


def _send(delivery: EmailDelivery, user, task: Task, name: str, count: int) -> bool:
    """Send the claimed email; record the outcome on its row either way."""
    from app.email import backoff_seconds, describe_failure, is_transient

    try:
        attached = send_export_email(user, task, name, count)
    except Exception as exc:
        db.session.rollback()
        reason = describe_failure(exc)
        config = current_app.config
        retry = is_transient(exc) and delivery.attempts < config["MAIL_RETRY_ATTEMPTS"]
        outbox.record_failure(delivery.id, reason, final=not retry)
        retry_in = backoff_seconds(delivery.attempts - 1, config["MAIL_RETRY_BACKOFF"],
                                   config["MAIL_RETRY_BACKOFF_MAX"]) if retry else None
        raise ExportEmailError(f"could not email {user.email}: {reason}", retry_in) from exc
    outbox.finish(delivery.id, DeliveryStatus.SENT)
    return attached
