"""Kill the worker's pool process at a chosen step of an export, once.

A worker started with ``-I tests.support.crash_points`` reads ``$CRASH_CONTROL``, a
file holding the step to crash at (empty: none), before each step; the first time it
reaches that step it empties the file and SIGKILLs its own process, as an OOM killer
or a lost machine would. Steps, in the order an export meets them:

``writing``        part-way through writing the file
``file_recorded``  the file is written and recorded on the task, no email promised yet
``claimed``        the email's outbox row is claimed, the message not yet handed to SMTP
``sent``           the SMTP server took the message, the row not yet marked sent
``marked_sent``    the row is marked sent, the task not yet finished
"""
from __future__ import annotations

import os
import signal
from functools import wraps

from app import exports, outbox
from app.models import DeliveryStatus


def _crash_if(step: str) -> None:
    control = os.environ.get("CRASH_CONTROL")
    if not control or not os.path.exists(control):
        return
    with open(control) as file:
        wanted = file.read().strip()
    if wanted != step:
        return
    with open(control, "w"):
        pass  # once: the run that takes over must get through
    os.kill(os.getpid(), signal.SIGKILL)


def _install() -> None:
    record, delivery, send, finish = (exports.ProgressReporter.record, exports._export_delivery,
                                      exports.send_export_email, outbox.finish)

    @wraps(record)
    def crashing_record(self, percent, *counts):
        record(self, percent, *counts)
        if 0 < percent < 100:
            _crash_if("writing")

    @wraps(delivery)
    def crashing_delivery(*args, **kwargs):
        _crash_if("file_recorded")
        return delivery(*args, **kwargs)

    @wraps(send)
    def crashing_send(*args, **kwargs):
        _crash_if("claimed")
        attached = send(*args, **kwargs)
        _crash_if("sent")
        return attached

    @wraps(finish)
    def crashing_finish(delivery_id, status, reason=None):
        finish(delivery_id, status, reason)
        if status == DeliveryStatus.SENT:
            _crash_if("marked_sent")

    exports.ProgressReporter.record = crashing_record
    exports._export_delivery = crashing_delivery
    exports.send_export_email = crashing_send
    outbox.finish = crashing_finish


_install()
