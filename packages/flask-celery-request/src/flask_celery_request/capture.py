"""Step one, in the web process: reduce the live request to a small JSON-able mapping.

The mapping holds what werkzeug needs to rebuild the request (method, scheme, host,
port, script root, path, raw query string, headers, client address), the parsed form
or the raw body, and the signed-in user's id. Known credentials are left out here,
before anything leaves the process: the worker never needs a password. Everything
else is protected by the encryption of the next step (:mod:`.transport`).
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import unquote_plus

from werkzeug.wrappers import Request

from . import compat
from .settings import SCRUB_URL, ContextSettings

logger = logging.getLogger(__name__)

URLENCODED = "application/x-www-form-urlencoded"
FORM_MIMETYPES = frozenset({URLENCODED, "multipart/form-data"})
#: Deeper JSON bodies are refused rather than carried unscrubbed.
MAX_JSON_DEPTH = 100


class ContextCaptureError(ValueError):
    """The request cannot be carried: the task is not sent. The message says why."""


def capture_request(request: Request, settings: ContextSettings, user_id: str | None) -> dict[str, Any]:
    """The carried form of ``request``: ``{"e": environ, "f"|"b"|"b64": ..., "u": user}``.

    Raises :class:`ContextCaptureError` for a body it cannot scrub (JSON nested deeper
    than :data:`MAX_JSON_DEPTH`).
    """
    environ = _carried_environ(request.environ, settings)
    context: dict[str, Any] = {"e": environ}
    mimetype = request.mimetype
    if mimetype in FORM_MIMETYPES and compat.form_is_parsed(request):
        # werkzeug names a multipart field whose name it cannot parse None: it could be
        # anything, a password too, and no view can ask for it.
        context["f"] = [[name, value] for name, value in request.form.items(multi=True)
                        if name is not None and not settings.is_sensitive(name)]
    elif mimetype == URLENCODED:
        # Not parsed by the view: carry the body as it came, less its sensitive fields,
        # and let the worker parse it if the task reads the form.
        _capture_body(context, request, settings)
    elif mimetype in FORM_MIMETYPES:
        if (request.content_length or 0) > settings.max_bytes:
            _drop_body(context, request.content_length, settings)  # an upload: not parsed here
        else:
            context["f"] = [[name, value] for name, value in request.form.items(multi=True)
                            if name is not None and not settings.is_sensitive(name)]
    elif request.content_length or _is_chunked(request):
        _capture_body(context, request, settings)
    if user_id is not None:
        context["u"] = user_id
    return context


def _carried_environ(environ: dict[str, Any], settings: ContextSettings) -> dict[str, str]:
    # In the environ's own order: request.headers lists CONTENT_TYPE and CONTENT_LENGTH
    # where the server put them among the HTTP_* keys, and the replay must too.
    carried = {}
    for key, verdict in settings.environ_plan(tuple(environ)):
        value = environ[key]
        if value is None:
            continue
        if type(value) is not str:
            value = str(value)  # WSGI says str, but servers differ (werkzeug's REMOTE_PORT is an int)
        if verdict == SCRUB_URL and "?" in value:
            url, _, query = value.partition("?")
            query, hash_mark, fragment = query.partition("#")
            value = url + "?" + scrub_query(query, settings) + hash_mark + fragment
        carried[key] = value
    query = carried.get("QUERY_STRING")
    if query:
        carried["QUERY_STRING"] = scrub_query(query, settings)
    return carried


def scrub_query(query: str, settings: ContextSettings) -> str:
    """A raw query string less its sensitive fields, the rest byte for byte."""
    parts = query.split("&")
    kept = [part for part in parts if not settings.is_sensitive(_query_name(part.partition("=")[0]))]
    return query if len(kept) == len(parts) else "&".join(kept)


def _query_name(raw_name: str) -> str:
    # The name as request.args has it, so that ``pas%73word`` is judged as "password".
    if raw_name.isascii() and "%" not in raw_name and "+" not in raw_name:
        return raw_name
    return unquote_plus(raw_name.encode("latin-1", "replace").decode("utf-8", "replace"), errors="replace")


def _is_chunked(request: Request) -> bool:
    # werkzeug gives a chunked request no content_length; its body is read all the same.
    return request.headers.get("Transfer-Encoding", "").lower() == "chunked"


def _capture_body(context: dict[str, Any], request: Request, settings: ContextSettings) -> None:
    environ = context["e"]
    length = request.content_length
    body = request.get_data(cache=True) if length is None else None  # chunked: known once read
    size = len(body) if length is None else length
    if size > settings.max_bytes:
        _drop_body(context, size, settings)
        return
    if body is None:
        body = request.get_data(cache=True)
    if settings.sensitive is not None:
        if request.is_json:
            body = _scrub_json_body(body, settings)
        elif request.mimetype == URLENCODED:
            # The raw bytes are latin-1 text to scrub_query, byte for byte.
            body = scrub_query(body.decode("latin-1"), settings).encode("latin-1")
    environ["CONTENT_LENGTH"] = str(len(body))
    # It travels whole, of a known length: the replayed request is not chunked.
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    try:
        context["b"] = body.decode("utf-8")
    except UnicodeDecodeError:
        context["b64"] = base64.b64encode(body).decode("ascii")


def _drop_body(context: dict[str, Any], size: int, settings: ContextSettings) -> None:
    context["dropped"] = "body"
    context["e"].pop("CONTENT_LENGTH", None)
    logger.warning("Request body of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d; "
                   "dropped the body to fit", size, settings.max_bytes)


def _scrub_json_body(body: bytes, settings: ContextSettings) -> bytes:
    try:
        document = json.loads(body)
    except RecursionError:
        raise ContextCaptureError(_too_deep()) from None
    except ValueError:
        return body  # not JSON after all: carried as it is, encrypted
    scrubbed, changed = _scrub_json(document, settings, 0)
    if not changed:
        return body  # byte-exact
    return json.dumps(scrubbed, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _scrub_json(value: Any, settings: ContextSettings, depth: int) -> tuple[Any, bool]:
    if depth > MAX_JSON_DEPTH:
        raise ContextCaptureError(_too_deep())
    if isinstance(value, dict):
        kept, changed = {}, False
        for key, item in value.items():
            if settings.is_sensitive(key):
                changed = True
                continue
            kept[key], item_changed = _scrub_json(item, settings, depth + 1)
            changed = changed or item_changed
        return kept, changed
    if isinstance(value, list):
        items = [_scrub_json(item, settings, depth + 1) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def _too_deep() -> str:
    return (f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep, so its credentials "
            "cannot be scrubbed; the task was not sent")


def shrink_to_fit(context: dict[str, Any], encode, max_bytes: int) -> bytes | None:
    """``encode(context)`` within ``max_bytes``: drop the body and form, then the headers
    (the host stays) and query; None (logged) if even that does not fit."""
    encoded = encode(context)
    if len(encoded) <= max_bytes:
        return encoded
    size = len(encoded)
    environ = context["e"]
    for key in ("f", "b", "b64"):
        context.pop(key, None)
    environ.pop("CONTENT_LENGTH", None)
    context["dropped"] = "body"
    encoded = encode(context)
    if len(encoded) <= max_bytes:
        logger.warning("Request context of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d; "
                       "dropped the body and form to fit", size, max_bytes)
        return encoded
    for key in [key for key in environ if key.startswith("HTTP_") and key != "HTTP_HOST"]:
        del environ[key]
    environ.pop("QUERY_STRING", None)
    context["dropped"] = "headers"
    encoded = encode(context)
    if len(encoded) <= max_bytes:
        logger.warning("Request context of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d; "
                       "dropped the body, form, headers and query to fit", size, max_bytes)
        return encoded
    logger.warning("Request context of %d bytes is above CELERY_CONTEXT_MAX_BYTES=%d even without "
                   "body, form, headers and query (path %d bytes); sending the task without it",
                   size, max_bytes, len(environ.get("PATH_INFO", "")))
    return None
