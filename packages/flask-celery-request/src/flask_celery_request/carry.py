"""Values carried with the request: named, JSON, captured at send time, restored in the worker.

A value is whatever the request does not hold but a task needs as the view saw it:
the user's language, a request id, a value the view put in ``g``. Each is registered
once, with :meth:`~flask_celery_request.CeleryWithContext.carry`, as a
:class:`Carrier`: ``capture()`` runs in the sending request, ``restore(value)`` in the
worker's replayed request before the task body. The values travel in the sealed
context, so they are as confidential and as tamper-proof as the request itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from .capture import ContextCaptureError

DEFAULT_VALUE_MAX_BYTES = 4096


class CarriedValueMissing(RuntimeError):
    """A task's request context lacks a value registered as required: the task body
    did not run. The message names the value and why it may be missing."""


@dataclass(frozen=True)
class Carrier:
    """One carried value.

    ``capture()`` returns the value (JSON: str, int, float, bool, lists and dicts of
    them) or None for "nothing to carry". ``restore(value)`` puts it back in the
    worker; it may return a context manager, which is entered for the task's duration
    (Flask-Babel's ``force_locale`` is one). ``required`` fails a task whose carried
    request lacks the value; ``max_bytes`` caps its JSON.
    """

    name: str
    capture: Callable[[], Any]
    restore: Callable[[Any], AbstractContextManager | None]
    required: bool = False
    max_bytes: int = DEFAULT_VALUE_MAX_BYTES


class Carriers:
    """The carriers of one Celery app, in registration order (restored in that order)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Carrier] = {}

    def add(self, carrier: Carrier) -> Carrier:
        if not carrier.name or not isinstance(carrier.name, str):
            raise ValueError(f"a carried value needs a name, found {carrier.name!r}")
        if carrier.name in self._by_name:
            raise ValueError(f"a value named {carrier.name!r} is already carried")
        if carrier.max_bytes < 1:
            raise ValueError(f"max_bytes of carried value {carrier.name!r} must be positive, "
                             f"found {carrier.max_bytes}")
        self._by_name[carrier.name] = carrier
        return carrier

    def __iter__(self) -> Iterator[Carrier]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def capture(self) -> dict[str, Any]:
        """The values to carry now, by name; a value captured as None is left out.

        Raises :class:`ContextCaptureError` (the task is not sent) for a capture that
        fails, a value that is not JSON, or one above its ``max_bytes``.
        """
        values: dict[str, Any] = {}
        for carrier in self._by_name.values():
            try:
                value = carrier.capture()
            except ContextCaptureError:
                raise
            except Exception as exc:
                raise ContextCaptureError(f"capturing the carried value {carrier.name!r} failed: "
                                          f"{type(exc).__name__}: {exc}") from exc
            if value is None:
                continue
            try:
                size = len(orjson.dumps(value))
            except (orjson.JSONEncodeError, TypeError) as exc:
                raise ContextCaptureError(f"the carried value {carrier.name!r} is not JSON: {exc}") from None
            if size > carrier.max_bytes:
                raise ContextCaptureError(f"the carried value {carrier.name!r} is {size} bytes of JSON, "
                                          f"above its limit of {carrier.max_bytes}")
            values[carrier.name] = value
        return values

    @contextmanager
    def restored(self, values: Mapping[str, Any], task_name: str) -> Iterator[None]:
        """Restore ``values`` (those of a carried request) for the ``with`` body.

        Raises :class:`CarriedValueMissing` before the body runs when a required value
        is absent. Values no carrier knows (a sender running newer code) are ignored.
        """
        missing = [carrier.name for carrier in self._by_name.values()
                   if carrier.required and carrier.name not in values]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            raise CarriedValueMissing(
                f"task {task_name} needs the carried value(s) {names}, which its request did not carry "
                "(captured as None, sealed by code that did not carry it, or dropped with a context "
                "too large to carry)")
        with ExitStack() as stack:
            for carrier in self._by_name.values():
                if carrier.name in values:
                    manager = carrier.restore(values[carrier.name])
                    if manager is not None:
                        stack.enter_context(manager)
            yield
