"""Accounts: finding a user by what they type, and changing how they sign in."""
from __future__ import annotations

import unicodedata

import sqlalchemy as sa

from app.extensions import db
from app.models import User


def normalize_username(value: str | None) -> str | None:
    """NFKC: full-width and other compatibility forms become the plain characters, so
    ``ｂｏｂ`` is ``bob`` (and taken when ``bob`` is)."""
    return unicodedata.normalize("NFKC", value) if value is not None else None


def user_by_name(username: str) -> User | None:
    """The account a username names: usernames are unique whatever their case."""
    return db.session.scalar(
        sa.select(User).where(sa.func.lower(User.username) == normalize_username(username).lower())
    )


def user_by_email(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == email.strip().lower()))


def end_all_sessions(user: User) -> None:
    """Sign ``user`` out everywhere: every session and remember-me cookie stops working."""
    user.end_all_sessions()
    db.session.commit()


def change_password(user: User, password: str) -> None:
    """Set a new password and end every session of the user (the caller may sign this
    browser back in)."""
    user.set_password(password)
    end_all_sessions(user)
