"""Telemetry for the ledger, on request: ``LEDGER_TELEMETRY=console`` prints
every span as JSON with OpenTelemetry's console exporter, and metrics every
ten seconds; ``LEDGER_TELEMETRY=tree`` prints each finished trace as a tree.

Either turns on flask_uow's spans and metrics (``UOW_OPENTELEMETRY``) and SQL
comments with the calling line (``UOW_SQL_COMMENTS = "location"``), and
OpenTelemetry's Flask and SQLAlchemy instrumentations when they are installed.
Needs ``pip install flask-uow[otel] opentelemetry-sdk``.
"""

from __future__ import annotations

import collections
import sys
import typing as t

from flask import Flask
from opentelemetry import metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Span
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

MODES = ("console", "tree")

#: Attributes shown in the tree, with the prefix they lose there.
_SHOWN = ("flask_uow.", "db.response.status_code", "exception.type")


class TreePrinter(SpanProcessor):
    """Print each trace as an indented tree once every span of it ended."""

    def __init__(self, out: t.TextIO = sys.stdout) -> None:
        self.out = out
        self.open: collections.Counter[int] = collections.Counter()
        self.ended: dict[int, list[ReadableSpan]] = collections.defaultdict(list)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.open[span.context.trace_id] += 1

    def on_end(self, span: ReadableSpan) -> None:
        trace_id = span.context.trace_id if span.context else 0
        self.ended[trace_id].append(span)
        self.open[trace_id] -= 1
        if self.open[trace_id] <= 0:
            del self.open[trace_id]
            self.out.write("\n".join(tree(self.ended.pop(trace_id))) + "\n")
            self.out.flush()


def _label(span: ReadableSpan) -> str:
    shown = [
        f"{key.removeprefix('flask_uow.')}={value!r}"
        for key, value in (span.attributes or {}).items()
        if key.startswith(_SHOWN)
    ]
    if span.status.status_code.name == "ERROR":
        shown.append("status=ERROR")
    ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    return f"{span.name}  ({ms:.1f} ms)" + ("  " + " ".join(shown) if shown else "")


def tree(spans: list[ReadableSpan]) -> list[str]:
    """The lines of an ASCII tree of *spans*, children in start order."""
    ids = {s.context.span_id for s in spans if s.context}
    children: dict[int | None, list[ReadableSpan]] = collections.defaultdict(list)
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent else None
        children[parent if parent in ids else None].append(span)
    lines: list[str] = []

    def walk(span: ReadableSpan, prefix: str, last: bool, root: bool) -> None:
        lines.append(
            _label(span)
            if root
            else f"{prefix}{'`-- ' if last else '|-- '}{_label(span)}"
        )
        inner = prefix if root else prefix + ("    " if last else "|   ")
        events = [e for e in span.events if e.name != "exception"]
        kids = children.get(span.context.span_id if span.context else None, [])
        for i, event in enumerate(events):
            attrs = " ".join(
                f"{k.removeprefix('flask_uow.')}={v!r}"
                for k, v in (event.attributes or {}).items()
            )
            branch = "`-- " if i == len(events) - 1 and not kids else "|-- "
            lines.append(f"{inner}{branch}event {event.name}  {attrs}")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in children[None]:
        walk(root, "", True, True)
    return lines


def setup(app: Flask, mode: str) -> None:
    """Set the global providers for *mode* and turn telemetry on in *app*'s
    config; call before ``uow.init_app(app)``.
    """
    if mode not in MODES:
        raise ValueError(
            f"LEDGER_TELEMETRY must be one of {', '.join(MODES)}, not {mode!r}."
        )
    provider = TracerProvider()
    if mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        reader = PeriodicExportingMetricReader(
            ConsoleMetricExporter(), export_interval_millis=10_000
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    else:
        provider.add_span_processor(TreePrinter())
    trace.set_tracer_provider(provider)
    app.config.setdefault("UOW_OPENTELEMETRY", True)
    app.config.setdefault("UOW_SQL_COMMENTS", "location")
    try:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
    except ImportError:  # pragma: no cover - an optional extra
        pass
    else:
        FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]


def instrument_engines(engines: t.Iterable[t.Any]) -> None:
    """OpenTelemetry's SQLAlchemy instrumentation on *engines*, if installed."""
    try:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError:  # pragma: no cover - an optional extra
        return
    SQLAlchemyInstrumentor().instrument(engines=list(engines), skip_dep_check=True)
