"""Carried values: captured at each send, sealed with the request, restored before the body."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask, g, request

from conftest import Published, make_app, sealer_of
from flask_celery_request import (CONTEXT_HEADER, CarriedValueMissing, CeleryWithContext, ContextCaptureError,
                                  ContextRefused, current_context)
from flask_celery_request.carry import Carrier, Carriers
from flask_celery_request.transport import check_shape


def carry_g(celery: CeleryWithContext, name: str = "tenant", **options: Any) -> None:
    """Carry ``g.<name>`` (the view sets it; the task reads it)."""
    celery.carry(name, capture=lambda: g.get(name), restore=lambda value: setattr(g, name, value), **options)


def test_a_value_is_captured_in_the_view_and_restored_before_the_body(
        app: Flask, celery: CeleryWithContext, published: Published) -> None:
    carry_g(celery)

    @celery.task
    def seen() -> Any:
        return g.get("tenant"), request.path

    with app.test_request_context("/t"):
        g.tenant = {"id": 7, "name": "Ünïcode"}
        seen.delay()
    token = published.tokens[0]
    assert sealer_of(app).open(token)["v"]["tenant"] == {"id": 7, "name": "Ünïcode"}
    assert seen.apply(headers={CONTEXT_HEADER: token}).get() == ({"id": 7, "name": "Ünïcode"}, "/t")


def test_a_value_captured_as_none_is_not_carried_nor_restored(app: Flask, celery: CeleryWithContext,
                                                             published: Published) -> None:
    restored = []
    celery.carry("absent", capture=lambda: None, restore=restored.append)

    @celery.task
    def body() -> str:
        return "ran"

    with app.test_request_context("/none"):
        body.delay()
    assert "absent" not in sealer_of(app).open(published.tokens[0]).get("v", {})
    assert body.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == "ran"
    assert restored == []


def test_values_are_captured_at_each_send(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    """The same request seals once while its values stay the same, again when one changes."""
    carry_g(celery)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/changes"):
        g.tenant = "a"
        noop.delay()
        noop.delay()
        g.tenant = "b"
        noop.delay()
        del g.tenant
        noop.delay()
    first, same, changed, gone = published.tokens
    assert first == same and changed != first and gone not in (first, changed)
    opened = [sealer_of(app).open(token) for token in (first, changed, gone)]
    assert [context.get("v", {}).get("tenant") for context in opened] == ["a", "b", None]
    # The request itself was captured once: the same environ in all three.
    assert opened[0]["e"] == opened[1]["e"] == opened[2]["e"]


def test_a_replayed_request_passes_its_context_on_unchanged(app: Flask, celery: CeleryWithContext,
                                                            published: Published) -> None:
    carry_g(celery)

    @celery.task
    def parent() -> str:
        g.tenant = "changed in the task"
        child.delay()
        return current_context()

    @celery.task
    def child() -> None:
        pass

    with app.test_request_context("/parent"):
        g.tenant = "from the view"
        token = current_context()
    assert parent.apply(headers={CONTEXT_HEADER: token}).get() == token
    assert published.tokens[-1] == token


@pytest.mark.parametrize(("value", "reason"), [
    (object(), "is not JSON"),
    ({1, 2}, "is not JSON"),
    ("x" * 5000, "is 5002 bytes of JSON, above its limit of 4096"),
])
def test_a_value_that_cannot_be_carried_stops_the_send(app: Flask, celery: CeleryWithContext,
                                                       published: Published, value: Any, reason: str) -> None:
    celery.carry("bad", capture=lambda: value, restore=lambda _: None)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/bad"), pytest.raises(ContextCaptureError) as raised:
        noop.delay()
    assert "'bad'" in str(raised.value) and reason in str(raised.value)
    assert published.messages == []


def test_max_bytes_is_per_value(app: Flask, celery: CeleryWithContext, published: Published) -> None:
    celery.carry("small", capture=lambda: "x" * 20, restore=lambda _: None, max_bytes=16)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/"), pytest.raises(ContextCaptureError, match="22 bytes of JSON, above its "
                                                                                 "limit of 16"):
        noop.delay()


def test_a_capture_that_raises_names_the_value(app: Flask, celery: CeleryWithContext) -> None:
    celery.carry("broken", capture=lambda: 1 / 0, restore=lambda _: None)

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/"), pytest.raises(ContextCaptureError,
                                                      match="capturing the carried value 'broken' failed: "
                                                            "ZeroDivisionError"):
        noop.delay()


def test_a_required_value_missing_fails_the_task_before_its_body(app: Flask, celery: CeleryWithContext,
                                                                 published: Published) -> None:
    carry_g(celery, required=True)
    ran = []

    @celery.task
    def body() -> None:
        ran.append(True)

    with app.test_request_context("/no-tenant"):
        body.delay()  # the view set no g.tenant
    result = body.apply(headers={CONTEXT_HEADER: published.tokens[0]})
    assert isinstance(result.result, CarriedValueMissing)
    assert f"task {body.name} needs the carried value(s) 'tenant'" in str(result.result)
    assert ran == []


def test_a_required_value_present_runs_the_task(app: Flask, celery: CeleryWithContext,
                                                published: Published) -> None:
    carry_g(celery, required=True)

    @celery.task
    def body() -> str:
        return g.tenant

    with app.test_request_context("/tenant"):
        g.tenant = "acme"
        body.delay()
    assert body.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == "acme"


def test_a_restore_may_hold_a_context_manager_for_the_run(app: Flask, celery: CeleryWithContext,
                                                          published: Published) -> None:
    events = []

    @contextmanager
    def scope(value: str):
        events.append(f"enter {value}")
        yield
        events.append(f"exit {value}")

    celery.carry("scope", capture=lambda: "s1", restore=scope)

    @celery.task
    def body() -> None:
        events.append("body")

    with app.test_request_context("/"):
        body.delay()
    body.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get()
    assert events == ["enter s1", "body", "exit s1"]


def test_values_are_restored_in_registration_order(app: Flask, celery: CeleryWithContext,
                                                   published: Published) -> None:
    order = []
    for name in ("first", "second", "third"):
        celery.carry(name, capture=lambda name=name: name, restore=order.append)

    @celery.task
    def body() -> None:
        pass

    with app.test_request_context("/"):
        body.delay()
    body.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get()
    assert order == ["first", "second", "third"]


def test_a_value_no_carrier_knows_is_ignored(app: Flask, published: Published) -> None:
    """A sender running newer code carries a value this worker does not know yet."""
    sender = CeleryWithContext(app)
    sender.carry("newer", capture=lambda: 1, restore=lambda _: None)

    @sender.task(name="shared.body")
    def body() -> str:
        return request.path

    with app.test_request_context("/newer"):
        body.delay()
    worker_app = make_app()
    worker = CeleryWithContext(worker_app)

    @worker.task(name="shared.body")
    def older() -> str:
        return request.path

    assert older.apply(headers={CONTEXT_HEADER: published.tokens[0]}).get() == "/newer"


def test_names_are_unique_and_the_standard_ones_taken(celery: CeleryWithContext) -> None:
    carry_g(celery, name="mine")
    with pytest.raises(ValueError, match="'mine' is already carried"):
        carry_g(celery, name="mine")
    for standard in ("request_id", "trace", "locale", "timezone", "g"):
        with pytest.raises(ValueError, match="already carried"):
            carry_g(celery, name=standard)


def test_bad_carrier_definitions_are_refused() -> None:
    carriers = Carriers()
    with pytest.raises(ValueError, match="needs a name"):
        carriers.add(Carrier("", lambda: 1, lambda _: None))
    with pytest.raises(ValueError, match="must be positive"):
        carriers.add(Carrier("x", lambda: 1, lambda _: None, max_bytes=0))


def test_carried_values_must_be_an_object() -> None:
    with pytest.raises(ContextRefused, match="carried values must be an object"):
        check_shape({"t": 1, "e": {}, "v": ["not", "an", "object"]})


def test_values_added_after_init_app_are_carried(app: Flask, published: Published) -> None:
    """carry() is called where the tasks are defined, often after init_app."""
    celery = CeleryWithContext()
    celery.init_app(app)
    carry_g(celery, name="late")

    @celery.task
    def noop() -> None:
        pass

    with app.test_request_context("/"):
        g.late = "yes"
        noop.delay()
    assert sealer_of(app).open(published.tokens[0])["v"]["late"] == "yes"
