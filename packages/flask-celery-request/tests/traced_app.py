"""A bare app under a tracing integration, for test_tracing.py: OpenTelemetry's Celery and
Flask instrumentation, or Sentry's Celery and Flask integrations (``FCR_TEST_TRACING``).

Both sides run in processes of their own, so the integrations' process-wide patches stay
out of the rest of the suite: the worker (``celery -A traced_app.celery worker``) and the
sender (``python traced_app.py``), which sends through a Flask request and prints, as
JSON, the headers of the messages it published and what the tasks saw. Each process
appends its spans (or Sentry transactions) to ``FCR_TEST_TRACING_RECORDS`` as JSON lines.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from celery.signals import before_task_publish
from flask import Flask, jsonify, request

from flask_celery_request import CeleryWithContext, current_request_id

TRACING = os.environ["FCR_TEST_TRACING"]
RECORDS = os.environ["FCR_TEST_TRACING_RECORDS"]


def record(entry: dict[str, Any]) -> None:
    with open(RECORDS, "a", encoding="utf-8") as out:
        out.write(json.dumps({**entry, "pid": os.getpid()}) + "\n")


def _opentelemetry(app: Flask) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans) -> SpanExportResult:
            for span in spans:
                record({"name": span.name, "trace_id": format(span.context.trace_id, "032x"),
                        "span_id": format(span.context.span_id, "016x"),
                        "parent_id": format(span.parent.span_id, "016x") if span.parent else None})
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    FlaskInstrumentor().instrument_app(app)


def _sentry() -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.transport import Transport

    class FileTransport(Transport):
        def capture_envelope(self, envelope) -> None:
            for item in envelope.items:
                if item.type == "transaction":
                    event = item.payload.json
                    context = event["contexts"]["trace"]
                    record({"name": event["transaction"], "trace_id": context["trace_id"],
                            "span_id": context["span_id"], "parent_id": context.get("parent_span_id")})
                    for span in event.get("spans", []):  # the sender's publish spans among them
                        record({"name": span.get("op"), "trace_id": span["trace_id"],
                                "span_id": span["span_id"], "parent_id": span.get("parent_span_id")})

    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=FileTransport, traces_sample_rate=1.0,
                    integrations=[CeleryIntegration(), FlaskIntegration()], default_integrations=False)


flask_app = Flask(__name__)
flask_app.config.update(
    SECRET_KEY="traced-app-secret",
    CELERY={
        "broker_url": os.environ["FCR_TEST_BROKER_URL"],
        "result_backend": os.environ["FCR_TEST_BROKER_URL"],
        "task_default_queue": os.environ["FCR_TEST_QUEUE"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    },
)
celery = CeleryWithContext(flask_app)
if TRACING == "opentelemetry":
    _opentelemetry(flask_app)
elif TRACING == "sentry":
    _sentry()
else:
    raise SystemExit(f"FCR_TEST_TRACING must be opentelemetry or sentry, found {TRACING!r}")


def seen() -> dict[str, Any]:
    return {"path": request.path, "request_id": current_request_id(),
            "traceparent": request.headers.get("traceparent")}


@celery.task(name="traced_app.observe")
def observe() -> dict[str, Any]:
    return seen()


@celery.task(name="traced_app.retried", bind=True, max_retries=2, default_retry_delay=0)
def retried(self) -> dict[str, Any]:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return {**seen(), "retries": self.request.retries}


@flask_app.post("/start")
def start():
    return jsonify(observe=observe.delay().id, retried=retried.delay().id)


def main() -> None:
    published: list[dict[str, Any]] = []

    def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        published.append(json.loads(json.dumps(headers or {}, default=str)))

    before_task_publish.connect(on_publish, weak=False)
    response = flask_app.test_client().post("/start", headers=json.loads(sys.argv[1]))
    ids = response.get_json()
    results = {name: celery.AsyncResult(task_id).get(timeout=30) for name, task_id in ids.items()}
    if TRACING == "sentry":
        import sentry_sdk

        sentry_sdk.flush()
    print(json.dumps({"published": published, "results": results}))


if __name__ == "__main__":
    main()
