"""The real OpenTelemetry SDK for the telemetry tests: spans go to an
in-memory exporter, metrics to an in-memory reader.

OpenTelemetry's global tracer and meter providers can be set only once per
process, and flask_uow uses the global ones (as libraries instrumented with
the OpenTelemetry API do). So the providers are set once per test session (per
pytest-xdist worker), and each test starts from an empty exporter and a
drained metric reader. The reader asks for delta temporality, so what a test
reads is what happened since the previous read, not a total of the whole run.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from opentelemetry import metrics
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import Counter
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics import UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_DELTA: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
}


def attrs(item: t.Any) -> dict[str, t.Any]:
    """The attributes of a span or a span event, as a plain dict."""
    return dict(item.attributes or {})


@dataclasses.dataclass
class Point:
    """One data point of a metric: its attributes and its value (a counter's
    sum, or a histogram's count and sum).
    """

    attributes: dict[str, t.Any]
    value: float
    count: int = 0


@dataclasses.dataclass
class Providers:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader


class Telemetry:
    """What the SDK recorded during one test."""

    def __init__(self, providers: Providers) -> None:
        self.providers = providers
        self._points: dict[str, list[Point]] = {}
        self.units: dict[str, str] = {}
        providers.exporter.clear()
        providers.reader.get_metrics_data()  # Drop what earlier tests left.

    # Spans ---------------------------------------------------------------

    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in the order they ended."""
        return list(self.providers.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The only finished span called *name*."""
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {found}"
        return found[0]

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        """The finished spans whose parent is *span*."""
        span_id = span.context.span_id
        return [s for s in self.spans() if s.parent and s.parent.span_id == span_id]

    def descendants(self, span: ReadableSpan) -> list[ReadableSpan]:
        found = []
        for child in self.children(span):
            found.append(child)
            found.extend(self.descendants(child))
        return found

    # Metrics -------------------------------------------------------------

    def collect(self) -> None:
        data = self.providers.reader.get_metrics_data()
        if data is None:
            return
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.units[metric.name] = metric.unit or ""
                    points = self._points.setdefault(metric.name, [])
                    for p in metric.data.data_points:
                        if isinstance(p, NumberDataPoint):
                            points.append(Point(attrs(p), p.value))
                        elif isinstance(p, HistogramDataPoint):
                            points.append(Point(attrs(p), p.sum, p.count))

    def points(self, name: str) -> list[Point]:
        """The data points of metric *name* recorded so far in this test."""
        self.collect()
        return list(self._points.get(name, []))

    def total(self, name: str, **attributes: t.Any) -> float:
        """The sum of a counter's points whose attributes include *attributes*."""
        return sum(
            p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )

    # Instrumentations ----------------------------------------------------

    @contextlib.contextmanager
    def flask_instrumented(self, app: Flask) -> cabc.Iterator[Flask]:
        """*app* with OpenTelemetry's Flask instrumentation, for the block."""
        FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
            app, tracer_provider=self.providers.tracer_provider
        )
        try:
            yield app
        finally:
            FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def sqlalchemy_instrumented(
        self, engines: cabc.Iterable[sa.Engine]
    ) -> cabc.Iterator[None]:
        """OpenTelemetry's SQLAlchemy instrumentation on *engines*, for the
        block. Its package declares SQLAlchemy below 2.1; it works with 2.1
        for what these tests use, so the declared range is not enforced.
        """
        SQLAlchemyInstrumentor().instrument(
            engines=list(engines),
            tracer_provider=self.providers.tracer_provider,
            skip_dep_check=True,
        )
        try:
            yield
        finally:
            SQLAlchemyInstrumentor().uninstrument()


@pytest.fixture(scope="session")
def otel_providers() -> Providers:
    """The global tracer and meter providers of this process, set once."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader(preferred_temporality=_DELTA)
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    if trace.get_tracer_provider() is not tracer_provider:  # pragma: no cover
        pytest.fail(
            "Another tracer provider was set globally before the telemetry"
            " tests (OTEL_PYTHON_TRACER_PROVIDER, or a plugin); unset it."
        )
    if metrics.get_meter_provider() is not meter_provider:  # pragma: no cover
        pytest.fail("Another meter provider was set globally; unset it.")
    return Providers(tracer_provider, meter_provider, exporter, reader)


@pytest.fixture
def telemetry(otel_providers: Providers, monkeypatch: pytest.MonkeyPatch) -> Telemetry:
    """An empty record of spans and metrics for this test.

    Flask's error responses are streamed (a ``ClosingIterator``), so the unit
    of a request that failed ends only when its response is closed, as a
    WSGI server does at once. The test client closes responses only when it
    buffers them: here it does, so that every unit's span has ended when the
    request returns.
    """
    open_ = FlaskClient.open

    def buffered_open(self: FlaskClient, *args: t.Any, **kwargs: t.Any) -> t.Any:
        kwargs.setdefault("buffered", True)
        return open_(self, *args, **kwargs)

    monkeypatch.setattr(FlaskClient, "open", buffered_open)
    return Telemetry(otel_providers)
