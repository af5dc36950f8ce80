"""What telemetry costs per request: flask_uow's spans and metrics
(``UOW_OPENTELEMETRY``) and SQL comments (``UOW_SQL_COMMENTS``), beside the
same app with both off and beside OpenTelemetry's own SQLAlchemy
instrumentation alone.

The OpenTelemetry SDK is set up as an application would: a tracer provider
whose spans go, synchronously, to an exporter that drops them (so the cost of
exporting over a network is left out, the cost of making spans is not), and a
meter provider with an in-memory reader.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import typing as t

from flask import Flask
from opentelemetry import metrics
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from flask_uow import UnitOfWork

from .apps import add_routes
from .apps import create_tables
from .requests import request_runner
from .requests import time_runners

KINDS = {
    "read one row by key": ("GET", "/one/500"),
    "insert one row": ("POST", "/insert"),
}
#: Variant name: (flask_uow's settings, with the SQLAlchemy instrumentation).
VARIANTS: dict[str, tuple[dict[str, t.Any], bool]] = {
    "off": ({}, False),
    "spans+metrics": ({"UOW_OPENTELEMETRY": True}, False),
    "comments": ({"UOW_SQL_COMMENTS": True}, False),
    "all": ({"UOW_OPENTELEMETRY": True, "UOW_SQL_COMMENTS": True}, False),
    "otel-sqlalchemy": ({}, True),
}


class _Drop(SpanExporter):
    """Receives every span and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: cabc.Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


@dataclasses.dataclass
class TelemetryResult:
    kind: str
    #: Median time per request in microseconds, by variant.
    median_us: dict[str, float]


_exporter: _Drop | None = None


def providers() -> _Drop:
    """Set the global tracer and meter providers once per process."""
    global _exporter
    if _exporter is None:
        _exporter = _Drop()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(
            MeterProvider(metric_readers=[InMemoryMetricReader()])
        )
    return _exporter


def build(url: str, config: dict[str, t.Any]) -> tuple[Flask, UnitOfWork]:
    unit_of_work = UnitOfWork()
    app = Flask("uow_telemetry")
    app.config["UOW_ENGINES"] = {"default": url}
    app.config.update(config)
    unit_of_work.init_app(app)
    add_routes(app, lambda: unit_of_work.session, commit=False)
    return app, unit_of_work


def run(url: str, rounds: int, per_round: int) -> tuple[list[TelemetryResult], int]:
    """Time each request kind in each variant. Returns the results and how
    many spans were exported (none would mean the spans were not made).

    OpenTelemetry's SQLAlchemy instrumentation, once installed, also wraps
    ``Engine.connect`` for every engine of the process, so flask_uow's
    variants are timed first, without it, and its variant after, alone.
    """
    exporter = providers()
    create_tables(url)
    built = {name: build(url, config) for name, (config, _) in VARIANTS.items()}
    try:
        results = []
        for kind, (method, path) in KINDS.items():
            runners = {
                name: request_runner(app, method, path)
                for name, (app, _) in built.items()
                if not VARIANTS[name][1]
            }
            results.append(
                TelemetryResult(kind, time_runners(runners, rounds, per_round))
            )
        engines = []
        for name, (app, unit_of_work) in built.items():
            if VARIANTS[name][1]:
                with app.app_context():
                    engines.append(unit_of_work.engine)
        instrumentor = SQLAlchemyInstrumentor()
        instrumentor.instrument(engines=engines, skip_dep_check=True)
        try:
            for result, (method, path) in zip(results, KINDS.values(), strict=True):
                for name, (app, _) in built.items():
                    if VARIANTS[name][1]:
                        runner = {name: request_runner(app, method, path)}
                        result.median_us.update(time_runners(runner, rounds, per_round))
        finally:
            instrumentor.uninstrument()
        return results, exporter.spans
    finally:
        for app, unit_of_work in built.values():
            unit_of_work.dispose_engines(app)


def run_report(
    backend: str,
    url: str,
    rounds: int,
    per_round: int,
    table: cabc.Callable[[list[str], list[list[str]]], list[str]],
) -> tuple[list[str], list[str]]:
    """The section of the results for *backend*, and what failed."""
    results, spans = run(url, rounds, per_round)
    rows = []
    for result in results:
        off = result.median_us["off"]
        cells = [result.kind]
        for name in VARIANTS:
            value = result.median_us[name]
            cells.append(
                f"{value:.1f}" if name == "off" else f"{value:.1f} ({value / off:.3f})"
            )
        rows.append(cells)
    lines = [
        f"**Telemetry, {backend}**: median microseconds per request over"
        f" {rounds} rounds of {per_round} requests (ratio to the same app with"
        " telemetry off): flask_uow's spans and metrics, its SQL comments, both,"
        " and OpenTelemetry's SQLAlchemy instrumentation alone (timed after the"
        " others, as it changes every engine once installed), with the"
        " OpenTelemetry SDK exporting to nowhere.",
        "",
        *table(["request", *VARIANTS], rows),
        "",
    ]
    failures = [] if spans else [f"{backend}: telemetry exported no span"]
    return lines, failures
