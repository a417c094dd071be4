"""Flask-Celery-Request: Celery tasks that run inside the Flask request that sent them.

A task sent while a request is active carries that request to the worker, where
``request``, ``url_for(..., _external=True)``, ``render_template``, ``current_user``
and the app's ``after_request`` hooks behave as they did in the view:

- :mod:`.capture` reduces the live request to a small mapping, known credentials left out;
- :mod:`.transport` seals it (AES-GCM, a key derived from ``SECRET_KEY``) into one
  message header, :data:`CONTEXT_HEADER`: args, kwargs, results and events never see it;
- :mod:`.replay` runs the task inside it in the worker, refusing a context that is
  expired, forged, tampered, truncated or oversized (:class:`ContextRefused`);
- :mod:`.task` holds :class:`CeleryWithContext` and its task class, which wire them in;
- :mod:`.carry` carries named values besides the request (:meth:`CeleryWithContext.carry`),
  :mod:`.standard` those every app carries: the request id (:mod:`.request_id`), the W3C
  trace context, Flask-Babel's locale and time zone, and ``CELERY_CONTEXT_G_KEYS``.

Without a request (celery beat, the CLI) a task runs in an app context.
"""
from .capture import ContextCaptureError
from .carry import CarriedValueMissing, Carrier
from .request_id import RequestIdFilter, current_request_id
from .task import CeleryWithContext, ContextTask, current_context
from .transport import CONTEXT_HEADER, ContextRefused

__version__ = "0.1.0"

__all__ = [
    "CONTEXT_HEADER",
    "CarriedValueMissing",
    "Carrier",
    "CeleryWithContext",
    "ContextCaptureError",
    "ContextRefused",
    "ContextTask",
    "RequestIdFilter",
    "current_context",
    "current_request_id",
]
