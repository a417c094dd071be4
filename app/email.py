"""Sending email: one helper for every message, and how to tell a failure that passes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import css_inline
from flask import current_app
from flask_mail import Message

from app.extensions import mail


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


#: Media queries cannot be inlined: ``keep_at_rules`` leaves them (alone) in a ``<style>``
#: block, for the clients that read one. Tables get ``width`` attributes from their CSS,
#: which is all some clients (Outlook on Windows) look at.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, apply_width_attributes=True,
                                 load_remote_stylesheets=False)


def inline_css(html: str) -> str:
    """``html`` with its ``<style>`` rules moved into ``style`` attributes, as email clients
    that drop ``<style>`` blocks (Gmail in some apps, Outlook) need."""
    return _INLINER.inline(html)


def build_message(subject: str, recipients: Sequence[str], text_body: str, html_body: str,
                  attachments: Sequence[Attachment] | None = None) -> Message:
    """A message with both parts; the HTML part's styles inlined (:func:`inline_css`)."""
    message = Message(subject, recipients=list(recipients), body=text_body, html=inline_css(html_body),
                      sender=current_app.config["MAIL_DEFAULT_SENDER"])
    for attachment in attachments or ():
        message.attach(attachment.filename, attachment.content_type, attachment.data)
    return message


def send_email(subject: str, recipients: Sequence[str], text_body: str, html_body: str,
               attachments: Sequence[Attachment] | None = None) -> None:
    """Send now, through the configured SMTP server (workers call this; views enqueue a
    task that does)."""
    mail.send(build_message(subject, recipients, text_body, html_body, attachments))


# --- delivery: transient errors are retried with backoff, permanent ones recorded -------

def is_transient(exc: BaseException) -> bool:
    """Whether an SMTP failure may go away by itself: connection trouble, timeouts and
    4xx replies are; 5xx replies (recipient rejected, message refused) are not."""
    import smtplib
    import socket

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError,
                            ConnectionError, socket.timeout, TimeoutError, OSError))


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for logs and the failure list (never the message body)."""
    import smtplib

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        reasons = "; ".join(f"{rcpt}: {code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
                            for rcpt, (code, msg) in exc.recipients.items())
        return f"recipient refused ({reasons})"
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"SMTP {exc.smtp_code} {message}"
    return f"{type(exc).__name__}: {exc}"


def backoff_seconds(retries: int, base: float, maximum: float, rand=None) -> float:
    """Exponential backoff with equal jitter: uniform between half and all of
    ``min(maximum, base * 2**retries)``, so a retry never comes sooner than half the
    wait (Celery's ``get_exponential_backoff_interval`` takes whole seconds only, and
    its full jitter may retry at once)."""
    import random

    ceiling = min(maximum, base * (2 ** retries))
    return ceiling * (0.5 + 0.5 * (rand or random.random)())
