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
