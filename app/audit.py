"""An audit trail of who did what, from which address, written by an after_request hook.

A view, or a task running in its replayed request, calls :func:`record`; the hook
writes the events when the response is finished, with the request's user, method,
path, host and client address, and whether it ran in a worker.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from celery import current_task
from flask import Flask, Response, current_app, g, request
from flask_babel import format_number, gettext, ngettext
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db
from app.i18n import N_, format_filesize
from app.models import AuditEvent

#: What the activity page calls each action (msgids); the rows keep the action's code.
ACTION_NAMES = {
    "export_posts_requested": N_("export posts requested"),
    "export_posts": N_("export posts"),
    "signed_in": N_("signed in"),
    "signed_out": N_("signed out"),
    "password_changed": N_("password changed"),
    "password_reset": N_("password reset by email"),
}


def action_name(action: str) -> str:
    """An action as the activity page names it, in the user's language."""
    name = ACTION_NAMES.get(action)
    return gettext(name) if name else action.replace("_", " ")


def _export_detail(facts: Mapping[str, Any]) -> str:
    posts = facts["posts"]
    words = dict(posts=format_number(posts), size=format_filesize(facts["bytes"]))
    if facts["attached"]:
        return ngettext("%(posts)s post, %(size)s, attached to the email",
                        "%(posts)s posts, %(size)s, attached to the email", posts, **words)
    return ngettext("%(posts)s post, %(size)s, linked from the email",
                    "%(posts)s posts, %(size)s, linked from the email", posts, **words)


#: How the activity page words each action's facts, in the reader's language.
DETAIL_WRITERS: dict[str, Callable[[Mapping[str, Any]], str]] = {"export_posts": _export_detail}


def detail_text(action: str, detail: str | None) -> str:
    """An event's detail as the activity page shows it: its facts in the reader's words
    and number formats, or the text as stored (events written before facts were kept, or
    facts this code cannot word): one odd row must not take the page down."""
    writer = DETAIL_WRITERS.get(action)
    if writer is None or not detail:
        return detail or ""
    try:
        facts = json.loads(detail)
    except ValueError:  # text, as written before facts were kept
        return detail
    try:
        return writer(facts)
    except (KeyError, TypeError):
        current_app.logger.warning("Showing the %s detail as stored, its facts unknown: %r", action, detail[:200])
        return detail


def record(action: str, detail: Mapping[str, Any] | str | None = None, user_id: int | None = None) -> None:
    """Have this request's after_request hook write an audit event, for the request's
    user or, when given, ``user_id`` (a task whose user has signed out since is still
    theirs). A mapping ``detail`` is kept as JSON facts, worded when shown (see
    :data:`DETAIL_WRITERS`), so that each reader gets them in their own language."""
    if isinstance(detail, Mapping):
        detail = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    g.setdefault("audit_events", []).append((action, detail, user_id))


def init_app(app: Flask) -> None:
    app.after_request(write_audit_events)


def write_audit_events(response: Response) -> Response:
    events = g.pop("audit_events", None)
    if not events:
        return response
    task = current_task._get_current_object()
    signed_in = current_user.id if current_user.is_authenticated else None
    db.session.commit()  # a fresh write transaction (see app.jobs.launch_task) for the inserts
    for action, detail, user_id in events:
        db.session.add(AuditEvent(
            user_id=user_id if user_id is not None else signed_in,
            action=action,
            detail=detail,
            method=request.method,
            path=request.path[:512],
            host=request.host[:255],
            remote_addr=request.remote_addr,
            user_agent=(request.user_agent.string or None) and request.user_agent.string[:255],
            task_id=task.request.id if task is not None else None,
            via_worker=task is not None and not (task.request.called_directly or task.request.is_eager),
        ))
    try:
        db.session.commit()
    except SQLAlchemyError:
        # The work is done; losing its audit line (the user was just deleted, the
        # database is down) must not turn it into a failure. Say so loudly instead.
        db.session.rollback()
        current_app.logger.exception("Could not write audit events %s for %s %s",
                                     [action for action, _, _ in events], request.method, request.path)
    return response
