"""The OpenTelemetry spans and metrics of units of work, through the
OpenTelemetry API and the global tracer and meter providers (the app chooses
the SDK and exporters). Imported only when ``UOW_OPENTELEMETRY`` is on.

Spans: ``flask_uow.unit`` (one per unit that opened a session, current while
the unit's work runs), ``flask_uow.transaction`` (one per outermost
transaction block, over all its tries) and ``flask_uow.commit`` (the COMMIT,
after the final flush). Metrics: ``flask_uow.transactions``,
``flask_uow.commit.duration``, ``flask_uow.retries`` and
``flask_uow.replica.fallbacks``. ``docs/telemetry.rst`` lists them all.
"""

from __future__ import annotations

import sys
import time
import typing as t

import sqlalchemy.orm as orm
from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry import trace
from opentelemetry.trace import Span
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode

from ._aborted import TransactionAbortedError
from ._retry import sqlstate
from ._twophase import prepared
from ._unit import Unit
from ._unit import UnitTrace

_FAILED = frozenset({"aborted", "error"})
_EMPTY_SPAN = trace.INVALID_SPAN


def outcome_of(error: BaseException | None, committing: bool) -> str:
    """How a transaction that did not commit ended: ``"aborted"`` when the
    guard refused its COMMIT, ``"error"`` when its COMMIT failed, else
    ``"rollback"``.
    """
    if isinstance(error, TransactionAbortedError):
        return "aborted"
    return "error" if committing and error is not None else "rollback"


def error_code(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, or on SQLite its extended result
    code's name (``SQLITE_BUSY``).
    """
    code = sqlstate(error)
    if code is None:
        name = getattr(getattr(error, "orig", error), "sqlite_errorname", None)
        code = name if isinstance(name, str) else None
    return code


def _end_with(span: Span, outcome: str, error: BaseException | None) -> None:
    if outcome in _FAILED:
        description = "" if error is None else f"{type(error).__name__}: {error}"
        span.set_status(Status(StatusCode.ERROR, description))
    span.end()


def _detach(context: t.Any, token: t.Any) -> None:
    """Make the span current before *context* current again, unless someone
    else changed the current context since (the Flask instrumentation resets
    it when its request ends, before the unit ends).
    """
    if token is not None and otel_context.get_current() is context:
        otel_context.detach(token)


class Spans:
    """The tracer and the instruments of one app."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("flask_uow")
        meter = metrics.get_meter("flask_uow")
        self.transactions = meter.create_counter(
            "flask_uow.transactions",
            unit="{transaction}",
            description="Units of work and outermost transaction blocks ended,"
            " by outcome and kind.",
        )
        self.commit_duration = meter.create_histogram(
            "flask_uow.commit.duration",
            unit="s",
            description="Duration of each COMMIT, after the final flush.",
        )
        self.retries = meter.create_counter(
            "flask_uow.retries",
            unit="{retry}",
            description="Transactional functions run again after a transient error.",
        )
        self.fallbacks = meter.create_counter(
            "flask_uow.replica.fallbacks",
            unit="{fallback}",
            description="Units that could read from a replica and read from the"
            " primary, by reason.",
        )

    # The unit ------------------------------------------------------------

    def opened(self, record: UnitTrace) -> None:
        span = self.tracer.start_span("flask_uow.unit")
        record.span = record.current = span
        record.context = trace.set_span_in_context(span)
        record.token = otel_context.attach(record.context)

    def ended(self, unit: Unit, record: UnitTrace) -> None:
        span = record.span
        outcome = record.outcome
        if outcome is None:  # No transaction ended: nothing was sent.
            outcome = "rollback" if unit.marked_for_rollback else "commit"
        span.set_attributes(
            {
                "flask_uow.outcome": outcome,
                "flask_uow.statements": record.statements,
                "flask_uow.engines": sorted(record.engines),
                "flask_uow.route": "replica" if record.replica else "primary",
                "flask_uow.two_phase": record.two_phase,
            }
        )
        _end_with(span, outcome, record.error)
        kind = "context" if unit.environ is None else "request"
        self.transactions.add(1, {"flask_uow.outcome": outcome, "flask_uow.kind": kind})
        _detach(record.context, record.token)

    def traceparent(self, record: UnitTrace) -> str:
        """The W3C trace context of the current span, or of flask_uow's
        innermost span of the unit when no span is current.
        """
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            span = record.current or _EMPTY_SPAN
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return ""
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    # The COMMIT ----------------------------------------------------------

    def before_commit(self, session: orm.Session) -> None:
        """Start the commit span once the final flush is done; the
        listeners that run before this one (the aborted-transaction check,
        the before_commit signal, two-phase commit's PREPAREs) have run.
        """
        unit: Unit | None = getattr(session, "uow_unit", None)
        record = None if unit is None else unit.trace
        if (
            record is None
            or record.current is None
            or session.in_nested_transaction()
            or not session.in_transaction()
        ):
            return
        session.flush()
        two_phase = prepared(session)
        record.two_phase = record.two_phase or two_phase
        record.commit = self.tracer.start_span(
            "flask_uow.commit",
            context=trace.set_span_in_context(record.current),
            attributes={
                "flask_uow.engines": sorted(record.open_engines),
                "flask_uow.two_phase": two_phase,
            },
        )
        record.commit_start = time.perf_counter()

    def after_commit(self, session: orm.Session) -> None:
        if session.in_nested_transaction():
            return
        unit: Unit | None = getattr(session, "uow_unit", None)
        record = None if unit is None else unit.trace
        if record is None:
            return
        record.committed = True
        record.outcome = "commit"
        record.error = None
        span, record.commit = record.commit, None
        if span is not None:
            seconds = time.perf_counter() - record.commit_start
            span.end()
            self.commit_duration.record(seconds, {"flask_uow.outcome": "commit"})

    def transaction_ended(self, record: UnitTrace) -> None:
        """The unit's transaction ended; if it did not commit, say how."""
        if record.committed:
            record.committed = False
            return
        # The error that ends a transaction is on its way out: its rollback
        # runs in an except block (the end of a request's, a block's).
        error = sys.exc_info()[1]
        span, record.commit = record.commit, None
        record.outcome = outcome_of(error, span is not None)
        record.error = error if record.outcome in _FAILED else None
        if span is not None:
            seconds = time.perf_counter() - record.commit_start
            if error is not None:
                span.record_exception(error)
            _end_with(span, "error", error)
            self.commit_duration.record(seconds, {"flask_uow.outcome": "error"})

    # Blocks, retries, replicas -------------------------------------------

    def block(self, unit: Unit) -> Block:
        """The ``State.blocks`` hook: watch an outermost transaction."""
        return Block(self, unit.trace)

    def fell_back(self, reason: str) -> None:
        self.fallbacks.add(1, {"flask_uow.reason": reason})


class Block:
    """The span of one outermost transaction, over all its tries."""

    def __init__(self, spans: Spans, record: UnitTrace | None) -> None:
        self.spans = spans
        self.record = record
        self.attempts = 0
        self.outcome = "rollback"
        self.error: BaseException | None = None
        self.previous = None if record is None else record.current
        parent = self.previous
        self.span = spans.tracer.start_span(
            "flask_uow.transaction",
            context=None if parent is None else trace.set_span_in_context(parent),
        )
        self.context = trace.set_span_in_context(self.span)
        self.token = otel_context.attach(self.context)
        if record is not None:
            record.current = self.span

    def ended(self, committed: bool, keep: bool, error: BaseException | None) -> None:
        self.attempts += 1
        self.outcome = "commit" if committed else outcome_of(error, keep)
        self.error = error

    def retried(self, error: BaseException, attempt: int) -> None:
        attributes: dict[str, t.Any] = {
            "flask_uow.attempt": attempt,
            "exception.type": f"{type(error).__module__}.{type(error).__qualname__}",
        }
        code = error_code(error)
        if code is not None:
            attributes["db.response.status_code"] = code
        self.span.add_event("flask_uow.retry", attributes)
        counted = {} if code is None else {"db.response.status_code": code}
        self.spans.retries.add(1, counted)

    def finished(self) -> None:
        span = self.span
        span.set_attributes(
            {"flask_uow.attempts": self.attempts, "flask_uow.outcome": self.outcome}
        )
        _end_with(span, self.outcome, self.error)
        self.spans.transactions.add(
            1, {"flask_uow.outcome": self.outcome, "flask_uow.kind": "block"}
        )
        if self.record is not None and self.record.current is span:
            self.record.current = self.previous
        _detach(self.context, self.token)
