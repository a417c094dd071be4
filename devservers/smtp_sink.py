"""A real SMTP server (aiosmtpd) that keeps every message it receives.

    python -m devservers.smtp_sink        # 127.0.0.1:8025, messages in instance/mail/*.eml
"""
from __future__ import annotations

import email
import email.policy
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller


@dataclass
class ReceivedMessage:
    sender: str
    recipients: list[str]
    message: EmailMessage
    path: Path | None


class MailSink:
    """An aiosmtpd handler: stores each message as a ``.eml`` file and in memory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.messages: list[ReceivedMessage] = []
        self._arrived = threading.Condition(threading.RLock())
        #: Replies to return instead of accepting, consumed one per message (tests).
        self.scripted_replies: list[str] = []
        #: Replies to RCPT TO instead of accepting the recipient, one per recipient (tests).
        self.scripted_rcpt_replies: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if self.scripted_rcpt_replies:
            return self.scripted_rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.scripted_replies:
            return self.scripted_replies.pop(0)
        raw = envelope.original_content or envelope.content
        path = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
            path.write_bytes(raw)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        received = ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), parsed, path)
        with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()
        print(f"mail from {received.sender} to {', '.join(received.recipients)}: "
              f"{parsed['Subject']!s}" + (f" -> {path}" if path else ""), flush=True)
        return "250 Message accepted for delivery"

    def received(self, subject: str | None = None) -> list[ReceivedMessage]:
        """The messages so far, or those whose subject contains ``subject``."""
        with self._arrived:
            return [m for m in self.messages if subject is None or subject in str(m.message["Subject"])]

    def wait_for(self, count: int = 1, timeout: float = 30.0, subject: str | None = None) -> list[ReceivedMessage]:
        """Block until ``count`` messages (with ``subject`` in their subject, if given) have
        arrived and return them; raise TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(matching := self.received(subject)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} message(s){f' about {subject!r}' if subject else ''} "
                                       f"within {timeout}s, got {len(matching)}")
                self._arrived.wait(remaining)
            return matching


def start_sink(directory: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> tuple[Controller, MailSink]:
    """Start the sink in a background thread; ``port=0`` picks a free port (``controller.port``)."""
    sink = MailSink(directory)
    controller = Controller(sink, hostname=host, port=port or _free_port(host))
    controller.start()
    return controller, sink


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def main() -> None:
    from config import config_from_environment

    config = config_from_environment()
    directory = Path(config.MAIL_SINK_DIR)
    controller, _ = start_sink(directory, "127.0.0.1", config.MAIL_PORT)
    print(f"SMTP sink on 127.0.0.1:{config.MAIL_PORT}, storing messages in {directory}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
