"""Step three, in the worker: run the task inside the request a context describes.

The carried environ keys become a WSGI environ again, the app builds its request from
it with ``app.request_context(environ)``, the form arrives parsed, the sender's user is
loaded through the app's ``user_loader``, and when the task returns the app's
``after_request`` hooks run on an empty 200 response. Teardown hooks always run.
"""
from __future__ import annotations

import base64
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from flask import Flask
from werkzeug.datastructures import ImmutableMultiDict

from . import compat

#: Where a replayed request keeps the token it came with, so that tasks sent from the
#: task inherit it, unchanged.
ENVIRON_TOKEN_KEY = "flask_celery_request.token"

_ENVIRON_DEFAULTS = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/",
    "QUERY_STRING": "",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "wsgi.url_scheme": "http",
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}


def environ_from_context(context: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
    """A WSGI environ for the carried request, its body in ``wsgi.input``."""
    environ = {**_ENVIRON_DEFAULTS, "wsgi.errors": sys.stderr, **context["e"]}
    if "b" in context:
        body = context["b"].encode("utf-8", "surrogatepass")
    elif "b64" in context:
        body = base64.b64decode(context["b64"])
    else:
        body = b""
    environ["wsgi.input"] = BytesIO(body)
    if token is not None:
        environ[ENVIRON_TOKEN_KEY] = token
    return environ


@contextmanager
def replay_request(app: Flask, context: Mapping[str, Any], token: str | None = None) -> Iterator[Any]:
    """Run the body of the ``with`` inside the request ``context`` describes.

    On a normal exit the app's ``after_request`` hooks run on an empty 200 response,
    whatever the task returned; teardown hooks run in every case, with the exception.
    """
    form = context.get("f")
    environ = environ_from_context(context, token)
    with compat.request_context(app, environ, None if form is None else ImmutableMultiDict(form)) as ctx:
        user_id = context.get("u")
        if user_id is not None:
            compat.restore_user(app, user_id)
        yield ctx
        compat.process_response(app, ctx, app.response_class())
