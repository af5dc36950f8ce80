"""Telemetry: OpenTelemetry spans and metrics of each unit of work
(``UOW_OPENTELEMETRY``), and SQL comments that say where a statement came
from (``UOW_SQL_COMMENTS``).

Off, nothing here is attached. On, each unit gets a :class:`UnitTrace` when
its session is made (``State.opened``); the connections its transactions
begin point to it, so that one ``before_cursor_execute`` listener per engine
counts the unit's statements, notes which engines and servers they went to,
and appends the comment. The spans and metrics, which need the
``opentelemetry-api`` package, are in ``_telemetry_spans``, imported only
when they are on.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import has_request_context
from flask import request

from ._query_info import call_site
from ._query_info import CONTROL
from ._sqlcomment import append_comment
from ._sqlcomment import comment_of
from ._sqlcomment import encode
from ._sqlcomment import encoded
from ._sqlcomment import PERCENT_STYLES
from ._state import State
from ._unit import Unit
from ._unit import UnitTrace

if t.TYPE_CHECKING:
    from ._replicas import Replicas
    from ._telemetry_spans import Spans

#: Where a connection of a unit's transaction points to the unit's trace.
TRACE = "flask_uow.trace"

_MISSING_OTEL = (
    "'UOW_OPENTELEMETRY' is on, but the 'opentelemetry-api' package is not"
    " installed. Install it with 'pip install flask-uow[otel]' (and an"
    " OpenTelemetry SDK to export what it records), or turn"
    " 'UOW_OPENTELEMETRY' off."
)


def read_settings(config: cabc.Mapping[str, t.Any]) -> tuple[bool, bool | str]:
    """``UOW_OPENTELEMETRY`` and ``UOW_SQL_COMMENTS``, checked."""
    spans = config.get("UOW_OPENTELEMETRY", False)
    if not isinstance(spans, bool):
        raise TypeError(
            "'UOW_OPENTELEMETRY' must be True or False, not"
            f" {type(spans).__name__!r}. For example"
            " app.config['UOW_OPENTELEMETRY'] = True."
        )
    comments = config.get("UOW_SQL_COMMENTS", False)
    if isinstance(comments, str):
        if comments != "location":
            raise ValueError(
                f"'UOW_SQL_COMMENTS' must be True, False or 'location', not"
                f" {comments!r}. Use 'location' to add the file and line of the"
                " code that ran each statement."
            )
    elif not isinstance(comments, bool):
        raise TypeError(
            "'UOW_SQL_COMMENTS' must be True, False or 'location', not"
            f" {type(comments).__name__!r}."
        )
    return spans, comments


def install(app: Flask, state: State, replicas: Replicas | None) -> None:
    """Attach what the app's telemetry settings ask for; nothing when both
    are off.

    :raise RuntimeError: ``UOW_OPENTELEMETRY`` is on and ``opentelemetry-api``
        is not installed.
    """
    spans_on, comments = read_settings(app.config)
    if not spans_on and not comments:
        return
    spans: Spans | None = None
    if spans_on:
        try:
            from ._telemetry_spans import Spans
        except ImportError as e:  # pragma: no cover - tested in a child process
            raise RuntimeError(_MISSING_OTEL) from e
        spans = Spans()
    telemetry = Telemetry(spans, comments)
    state.opened.append(telemetry.opened)
    state.ended.append(telemetry.ended)
    servers = [(engine, name, False) for name, engine in state.engines.items()]
    if replicas is not None:
        servers += [
            (engine, name, True)
            for engine, (name, role) in replicas.labels.items()
            if role == "replica"
        ]
    for engine, name, replica in servers:
        listener = telemetry.listener(engine.dialect.paramstyle, name, replica)
        sa.event.listen(engine, "before_cursor_execute", listener, retval=True)
    factory = state.factory
    sa.event.listen(factory, "after_begin", telemetry.after_begin)
    sa.event.listen(factory, "after_transaction_end", telemetry.transaction_ended)
    if spans is not None:
        sa.event.listen(factory, "before_commit", spans.before_commit)
        sa.event.listen(factory, "after_commit", spans.after_commit)
        state.blocks.append(spans.block)
        if replicas is not None:
            replicas.fell_back.append(spans.fell_back)


class Telemetry:
    """The hooks and listeners of one app's telemetry."""

    def __init__(self, spans: Spans | None, comments: bool | str) -> None:
        self.spans = spans
        self.comments = bool(comments)
        self.location = comments == "location"
        #: The comment's encoded request fields, by endpoint, rule and method.
        self.encoded: dict[
            tuple[str | None, str | None, str], list[tuple[str, str]]
        ] = {}

    def opened(self, unit: Unit, session: orm.Session) -> None:
        """The ``opened`` hook: start the unit's trace (and span)."""
        pairs: list[tuple[str, str]] = []
        if self.comments and unit.environ is not None and has_request_context():
            rule = request.url_rule
            key = (
                request.endpoint,
                None if rule is None else rule.rule,
                request.method,
            )
            cached = self.encoded.get(key)
            if cached is None:
                # Encoded once per endpoint, rule and method: they are few.
                cached = self.encoded[key] = encoded(
                    {
                        "controller": key[0] or "",
                        "route": key[1] or "",
                        "method": key[2],
                    }
                )
            pairs = cached
        unit.trace = UnitTrace(pairs)
        if self.spans is not None:
            self.spans.opened(unit.trace)

    def ended(self, unit: Unit) -> None:
        """The ``ended`` hook: end the unit's span."""
        trace, unit.trace = unit.trace, None
        if trace is not None and self.spans is not None:
            self.spans.ended(unit, trace)

    def after_begin(
        self, session: orm.Session, transaction: t.Any, connection: sa.Connection
    ) -> None:
        """Point the connection a transaction of a unit began on to its trace."""
        unit: Unit | None = getattr(session, "uow_unit", None)
        trace = None if unit is None else unit.trace
        if trace is not None:
            info = connection.info
            if info.get(TRACE) is not trace:
                info[TRACE] = trace
                trace.connections.append(info)

    def transaction_ended(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        """A unit's transaction ended: its connections point to it no more."""
        if transaction.parent is not None:
            return
        unit: Unit | None = getattr(session, "uow_unit", None)
        if unit is None or unit.trace is None:
            return
        trace = unit.trace
        # The connections are closed by now: what they pointed with is the
        # info of their pool entries, kept.
        for info in trace.connections:
            if info.get(TRACE) is trace:
                del info[TRACE]
        trace.connections.clear()
        if self.spans is not None:
            self.spans.transaction_ended(trace)
        trace.open_engines.clear()

    def listener(
        self, paramstyle: str, name: str, replica: bool
    ) -> cabc.Callable[..., tuple[str, t.Any]]:
        """The ``before_cursor_execute`` listener of the engine *name*."""
        comments = self.comments
        location = self.location
        spans = self.spans
        percent = paramstyle in PERCENT_STYLES

        def before_cursor_execute(
            conn: sa.Connection,
            cursor: t.Any,
            statement: str,
            parameters: t.Any,
            context: t.Any,
            executemany: bool,
        ) -> tuple[str, t.Any]:
            trace: UnitTrace | None = conn.info.get(TRACE)
            if trace is None or CONTROL.match(statement):
                return statement, parameters
            trace.statements += 1
            trace.engines.add(name)
            trace.open_engines.add(name)
            if replica:
                trace.replica = True
            if not comments:
                return statement, parameters
            # The unit's fields were encoded once; a traceparent is hex digits
            # and dashes, which encoding leaves as they are.
            pairs = trace.fields
            if spans is not None:
                traceparent = spans.traceparent(trace)
                if traceparent:
                    pairs = [*pairs, ("traceparent", traceparent)]
            if location:
                frame = call_site()
                if frame is not None:
                    place = encode(f"{frame.f_code.co_filename}:{frame.f_lineno}")
                    pairs = sorted([*pairs, ("location", place)])
            # A statement sent without parameters is not formatted by the
            # driver, so its '%' stay single.
            double = percent and not getattr(context, "no_parameters", False)
            comment = comment_of(pairs, double_percent=double)
            return append_comment(statement, comment), parameters

        return before_cursor_execute
