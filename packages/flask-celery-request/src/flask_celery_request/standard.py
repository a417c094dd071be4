"""The values every app carries, besides the request: its id, the W3C trace context,
Flask-Babel's locale and time zone (when the app uses Flask-Babel), and the ``g``
attributes the app names in ``CELERY_CONTEXT_G_KEYS``."""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Any

from flask import current_app, g, request

from . import compat
from .carry import Carrier
from .request_id import current_request_id, is_well_formed, restore_request_id
from .settings import EXTENSION_KEY

#: W3C Trace Context: ``version-trace_id-parent_id-flags``, lower-case hex, the all-zero
#: ids invalid; a later version may append fields after a dash.
TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]*)?")
#: The length W3C asks propagators to keep at least; printable ASCII only.
TRACESTATE_MAX = 512
_TRACESTATE = re.compile(r"[ -~]{1,%d}" % TRACESTATE_MAX)
G_MAX_BYTES = 8192


def _capture_request_id() -> str | None:
    return current_request_id()


def _restore_request_id(value: Any) -> None:
    if is_well_formed(value):
        restore_request_id(value)


def _capture_trace() -> dict[str, str] | None:
    environ = request.environ
    parent = environ.get("HTTP_TRACEPARENT", "").strip()
    if not TRACEPARENT.fullmatch(parent):
        return None
    trace = {"traceparent": parent}
    state = environ.get("HTTP_TRACESTATE", "").strip()
    if _TRACESTATE.fullmatch(state):
        trace["tracestate"] = state
    return trace


def _restore_trace(value: Any) -> None:
    """Back into the replayed request's headers, where a task or a tracing library
    reads them, when the carried headers lost them (dropped to fit, or by name)."""
    environ = request.environ
    for header, key in (("traceparent", "HTTP_TRACEPARENT"), ("tracestate", "HTTP_TRACESTATE")):
        if isinstance(value.get(header), str):
            environ.setdefault(key, value[header])


def _uses_babel() -> bool:
    return "babel" in current_app.extensions


def _capture_locale() -> str | None:
    if not _uses_babel():
        return None
    from flask_babel import get_locale

    locale = get_locale()
    return None if locale is None else str(locale)


def _restore_locale(value: Any) -> AbstractContextManager | None:
    if not _uses_babel():
        return None
    from flask_babel import force_locale

    return force_locale(value)


def _capture_timezone() -> str | None:
    if not _uses_babel():
        return None
    from flask_babel import get_timezone

    zone = get_timezone()
    return None if zone is None else getattr(zone, "zone", None) or str(zone)


def _restore_timezone(value: Any) -> None:
    if _uses_babel():
        compat.force_babel_timezone(value)


def _capture_g() -> dict[str, Any] | None:
    keys = current_app.extensions[EXTENSION_KEY].settings.g_keys
    if not keys:
        return None
    values = {key: getattr(g, key) for key in keys if key in g}
    return values or None


def _restore_g(values: Any) -> None:
    for key, value in values.items():
        setattr(g, key, value)


def standard_carriers() -> list[Carrier]:
    """In the order they are restored: the id first, so that whatever the others log
    carries it."""
    return [
        Carrier("request_id", _capture_request_id, _restore_request_id, max_bytes=256),
        Carrier("trace", _capture_trace, _restore_trace, max_bytes=TRACESTATE_MAX + 128),
        Carrier("locale", _capture_locale, _restore_locale, max_bytes=64),
        Carrier("timezone", _capture_timezone, _restore_timezone, max_bytes=128),
        Carrier("g", _capture_g, _restore_g, max_bytes=G_MAX_BYTES),
    ]
