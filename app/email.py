"""Sending email: one helper for every message, synchronous or through Celery."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app
from flask_mail import Message

from app.extensions import mail


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def build_message(subject: str, recipients: Sequence[str], text_body: str, html_body: str,
                  attachments: Sequence[Attachment] | None = None) -> Message:
    message = Message(subject, recipients=list(recipients), body=text_body, html=html_body,
                      sender=current_app.config["MAIL_DEFAULT_SENDER"])
    for attachment in attachments or ():
        message.attach(attachment.filename, attachment.content_type, attachment.data)
    return message


def send_email(subject: str, recipients: Sequence[str], text_body: str, html_body: str,
               attachments: Sequence[Attachment] | None = None, sync: bool = False) -> None:
    """Send now (``sync=True``, e.g. from a worker) or hand the message to a Celery task."""
    if sync:
        mail.send(build_message(subject, recipients, text_body, html_body, attachments))
        return
    from app.tasks import send_email_task

    send_email_task.delay(subject, list(recipients), text_body, html_body,
                          [_encode_attachment(a) for a in attachments or ()])


def _encode_attachment(attachment: Attachment) -> dict:
    import base64

    return {"filename": attachment.filename, "content_type": attachment.content_type,
            "data": base64.b64encode(attachment.data).decode("ascii")}


def decode_attachment(payload: dict) -> Attachment:
    import base64

    return Attachment(payload["filename"], payload["content_type"], base64.b64decode(payload["data"]))


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
    """Exponential backoff with full jitter: uniform in [base * 2**retries / 2, base * 2**retries]."""
    import random

    ceiling = min(maximum, base * (2 ** retries))
    return ceiling * (0.5 + 0.5 * (rand or random.random)())
