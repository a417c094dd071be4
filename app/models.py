"""Database models: users, their posts, and the background tasks they start."""
from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timezone

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import current_app
from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from app.extensions import db, login


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_session_token() -> str:
    return secrets.token_urlsafe(16)


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every engine (SQLite drops the offset)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, found naive {value!r}")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class User(UserMixin, db.Model):
    __tablename__ = "user"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(64), index=True, unique=True)
    email: so.Mapped[str] = so.mapped_column(sa.String(120), index=True, unique=True)
    password_hash: so.Mapped[str | None] = so.mapped_column(sa.String(256))
    #: Part of every session and remember-me cookie of this user (see get_id): a new
    #: token ends them all, everywhere.
    session_token: so.Mapped[str] = so.mapped_column(sa.String(32), default=new_session_token)
    created: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    #: The language the user reads the site in (app/i18n.py's codes); None: the browser's.
    locale: so.Mapped[str | None] = so.mapped_column(sa.String(8))
    #: The user's IANA time zone; None: the browser's, else UTC.
    timezone: so.Mapped[str | None] = so.mapped_column(sa.String(64))

    posts: so.WriteOnlyMapped[Post] = so.relationship(back_populates="author", passive_deletes=True)
    tasks: so.WriteOnlyMapped[Task] = so.relationship(back_populates="user", passive_deletes=True)

    def __repr__(self) -> str:
        return f"<User {self.username}>"

    def get_id(self) -> str:
        """What Flask-Login keeps in the session and the remember-me cookie."""
        if self.session_token is None:  # a user not flushed yet
            self.session_token = new_session_token()
        return f"{self.id}:{self.session_token}"

    def end_all_sessions(self) -> None:
        """Make every session and remember-me cookie of this user invalid (commit to apply)."""
        self.session_token = new_session_token()

    def set_password(self, password: str) -> None:
        method = current_app.config.get("PASSWORD_HASH_METHOD")
        self.password_hash = (
            generate_password_hash(password, method) if method else generate_password_hash(password)
        )

    def check_password(self, password: str) -> bool:
        return self.password_hash is not None and check_password_hash(self.password_hash, password)

    def task_in_progress(self, name: str) -> Task | None:
        return db.session.scalar(
            self.tasks.select().where(Task.name == name, Task.finished.is_(None))
        )

    def tasks_in_progress(self) -> list[Task]:
        return list(db.session.scalars(
            self.tasks.select().where(Task.finished.is_(None)).order_by(Task.created)
        ))

    def posts_select(self) -> sa.Select:
        return self.posts.select().order_by(Post.timestamp.desc(), Post.id.desc())


@login.user_loader
def load_user(session_id: str) -> User | None:
    """The user of a session or remember-me cookie, if its token is still theirs."""
    user_id, _, token = session_id.partition(":")
    try:
        user = db.session.get(User, int(user_id))
    except ValueError:
        return None
    if user is None or not token or not hmac.compare_digest(user.session_token, token):
        return None
    return user


class Post(db.Model):
    __tablename__ = "post"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    body: so.Mapped[str] = so.mapped_column(sa.String(280))
    timestamp: so.Mapped[datetime] = so.mapped_column(UTCDateTime, index=True, default=utcnow)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("user.id", ondelete="CASCADE"), index=True)

    author: so.Mapped[User] = so.relationship(back_populates="posts")

    # A user's posts in time order without a sort: profiles and exports read this way.
    __table_args__ = (sa.Index("ix_post_user_timeline", "user_id", "timestamp", "id"),)

    def __repr__(self) -> str:
        return f"<Post {self.id} by {self.user_id}>"


class TaskState:
    """Task states; the names are Celery's, plus PROGRESS while a task reports it."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RUNNING = (PENDING, STARTED, PROGRESS)
    FINISHED = (SUCCESS, FAILURE)


class Task(db.Model):
    """A background job a user started, tracked from enqueue to its end."""

    __tablename__ = "task"

    id: so.Mapped[str] = so.mapped_column(sa.String(36), primary_key=True)  # the Celery task id
    name: so.Mapped[str] = so.mapped_column(sa.String(128), index=True)
    description: so.Mapped[str] = so.mapped_column(sa.String(128))
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("user.id", ondelete="CASCADE"), index=True)
    state: so.Mapped[str] = so.mapped_column(sa.String(16), default=TaskState.PENDING)
    progress: so.Mapped[int] = so.mapped_column(sa.Integer, default=0)
    #: Items handled so far and in all (an export's posts), as the last report said;
    #: total is None until the first report.
    done: so.Mapped[int] = so.mapped_column(sa.Integer, default=0, server_default="0")
    total: so.Mapped[int | None] = so.mapped_column(sa.Integer)
    #: The size of the finished file, in bytes.
    result_bytes: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    error: so.Mapped[str | None] = so.mapped_column(sa.Text)
    created: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    finished: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    result_location: so.Mapped[str | None] = so.mapped_column(sa.String(512), index=True)
    #: The run working on the task, and until when: another run of the same message (a
    #: redelivery) stands back while the lease holds, and takes over once it has ended.
    lease_owner: so.Mapped[str | None] = so.mapped_column(sa.String(32))
    lease_expires: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)

    user: so.Mapped[User] = so.relationship(back_populates="tasks")

    __table_args__ = (
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_task_progress_range"),
        # At most one unfinished task of a kind per user, enforced by the database so
        # that two requests arriving at the same instant cannot both start one.
        sa.Index(
            "uq_task_one_running_per_user",
            "user_id",
            "name",
            unique=True,
            sqlite_where=sa.text("finished IS NULL"),
            postgresql_where=sa.text("finished IS NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.id} {self.state}>"

    @property
    def is_running(self) -> bool:
        return self.finished is None

    def finish(self, error: str | None = None) -> None:
        """End the task and commit: SUCCESS at 100%, or FAILURE with ``error``, words
        meant for the user (the traceback goes to the log)."""
        self.state = TaskState.FAILURE if error else TaskState.SUCCESS
        self.progress = self.progress if error else 100
        self.error = error
        self.finished = utcnow()
        db.session.commit()


def finish_task(task_id: str, *, error: str | None = None) -> Task | None:
    """:meth:`Task.finish` the row of ``task_id``; None if it is gone."""
    row = db.session.get(Task, task_id)
    if row is not None:
        row.finish(error)
    return row


class DeliveryStatus:
    PENDING = "pending"    # waiting in the queue (or for its eta)
    SENDING = "sending"    # claimed by a worker
    RETRYING = "retrying"  # a transient SMTP error; another attempt is scheduled
    SENT = "sent"
    FAILED = "failed"      # permanent error, or out of attempts: see last_error
    SKIPPED = "skipped"    # nothing to send any more (the user was deleted)


class EmailDelivery(db.Model):
    """One email we promised to send, from the moment its cause was committed.

    The row is written in the same transaction as its cause (the outbox pattern), so an
    email is never lost to a broker outage, and it records every failure for admins.
    """

    __tablename__ = "email_delivery"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    kind: so.Mapped[str] = so.mapped_column(sa.String(32), index=True)
    user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("user.id", ondelete="SET NULL"), index=True)
    recipient: so.Mapped[str] = so.mapped_column(sa.String(120))
    status: so.Mapped[str] = so.mapped_column(sa.String(16), default=DeliveryStatus.PENDING, index=True)
    attempts: so.Mapped[int] = so.mapped_column(default=0)
    last_error: so.Mapped[str | None] = so.mapped_column(sa.Text)
    #: The sealed request context of the request that caused it, for re-sends.
    request_context: so.Mapped[str | None] = so.mapped_column(sa.Text)
    #: The job whose result this email announces (an export): one email per job.
    task_id: so.Mapped[str | None] = so.mapped_column(
        sa.ForeignKey("task.id", ondelete="SET NULL", name="fk_email_delivery_task_id"))
    created: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    updated: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("task_id", name="uq_email_delivery_task_id"),
        # Ids are never reused, so a late message for a deleted delivery cannot claim a new one.
        {"sqlite_autoincrement": True},
    )

    def __repr__(self) -> str:
        return f"<EmailDelivery {self.id} {self.kind} to {self.recipient} {self.status}>"


class AuditEvent(db.Model):
    """Who did what, from which address and host; written by an after_request hook."""

    __tablename__ = "audit_event"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("user.id", ondelete="CASCADE"), index=True)
    action: so.Mapped[str] = so.mapped_column(sa.String(64))
    detail: so.Mapped[str | None] = so.mapped_column(sa.String(512))
    method: so.Mapped[str] = so.mapped_column(sa.String(10))
    path: so.Mapped[str] = so.mapped_column(sa.String(512))
    host: so.Mapped[str] = so.mapped_column(sa.String(255))
    remote_addr: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    user_agent: so.Mapped[str | None] = so.mapped_column(sa.String(255))
    task_id: so.Mapped[str | None] = so.mapped_column(sa.String(36))
    via_worker: so.Mapped[bool] = so.mapped_column(default=False)
    created: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow, index=True)
