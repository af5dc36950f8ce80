"""Query insight: the statements each unit of work runs, N+1 warnings,
query-count assertions, Server-Timing and slow-statement logs.

Engine listeners are attached only while something needs them: a feature
turned on in the config, or an active query-count assertion.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import re
import time
import typing as t
import warnings
import weakref

import sqlalchemy as sa
from flask import Flask
from flask import has_app_context
from flask import Response
from sqlalchemy.engine.interfaces import ExecuteStyle

from ._query_info import call_site
from ._query_info import CONTROL
from ._query_info import describe
from ._query_info import lazy_relationship
from ._query_info import NPlusOneWarning
from ._query_info import QueryRecord
from ._query_info import Settings
from ._query_info import UnitQueries
from ._query_info import where
from ._state import State

if t.TYPE_CHECKING:
    from ._replicas import Replicas


class Insight:
    """Query insight for every app of one :class:`~flask_uow.UnitOfWork`."""

    def __init__(self) -> None:
        self.recorders: weakref.WeakKeyDictionary[Flask, Recorder] = (
            weakref.WeakKeyDictionary()
        )
        #: The record lists of the active query-count assertions.
        self.captures: list[list[QueryRecord]] = []

    def install(
        self,
        app: Flask,
        state: State,
        settings: Settings,
        replicas: Replicas | None,
    ) -> None:
        """Attach what *app*'s settings need. Called before the request hooks
        are registered, so that the Server-Timing hook runs after the
        end-of-request commit.
        """
        recorder = Recorder(self, app, state, settings, replicas)
        self.recorders[app] = recorder
        if recorder.settings.server_timing:
            app.after_request(recorder.add_server_timing)

    def recorded(self, app: Flask, state: State) -> list[QueryRecord]:
        unit = state.peek(app)
        queries = None if unit is None else unit.queries
        if queries is None or queries.records is None:
            return []
        return list(queries.records)

    @contextlib.contextmanager
    def expect(self, n: int, exact: bool) -> cabc.Iterator[list[QueryRecord]]:
        name = "assert_num_queries" if exact else "assert_max_queries"
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(
                f"{name!r} needs the number of statements as an int, not"
                f" {type(n).__name__!r}."
            )
        if n < 0:
            raise ValueError(
                f"{name!r} needs a number of statements of 0 or more, not {n}."
            )
        records: list[QueryRecord] = []
        self.captures.append(records)
        self.refresh()
        try:
            yield records
        finally:
            self.captures.remove(records)
            self.refresh()
        if len(records) > n or (exact and len(records) != n):
            raise AssertionError(_count_message(records, n, exact))

    def refresh(self) -> None:
        for recorder in list(self.recorders.values()):
            recorder.refresh()


def _count_message(records: list[QueryRecord], n: int, exact: bool) -> str:
    expected = f"exactly {n}" if exact else f"at most {n}"
    ran = "1 statement" if len(records) == 1 else f"{len(records)} statements"
    lines = [f"{ran} ran, {expected} expected:"]
    for i, record in enumerate(records, 1):
        sql = " ".join(record.statement.split())
        lines.append(f"{i}. {sql}\n   at {record.location} [{record.engine}]")
    return "\n".join(lines)


class Recorder:
    """The engine listeners of one app."""

    def __init__(
        self,
        insight: Insight,
        app: Flask,
        state: State,
        settings: Settings,
        replicas: Replicas | None,
    ) -> None:
        self.insight = insight
        # The listeners are held by the engines, which live as long as the
        # app: they must not hold the app itself.
        self.app = weakref.ref(app)
        self.logger = app.logger
        self.state = state
        self.replicas = replicas
        self.settings = settings
        #: Whether statements are attributed to units of work.
        self.per_unit = (
            settings.record or settings.n_plus_one != "off" or settings.server_timing
        )
        self.listeners: list[tuple[sa.Engine, str, t.Any]] = []
        self.refresh()

    def refresh(self) -> None:
        """Attach the listeners when they are needed, remove them when not."""
        needed = self.settings.always or bool(self.insight.captures)
        if needed and not self.listeners:
            servers = [(e, n, "primary") for n, e in self.state.engines.items()]
            if self.replicas is not None:
                servers += [
                    (engine, name, role)
                    for engine, (name, role) in self.replicas.labels.items()
                    if role == "replica"
                ]
            for engine, name, role in servers:
                for ident, fn in self.make_listeners(name, role):
                    sa.event.listen(engine, ident, fn)
                    self.listeners.append((engine, ident, fn))
        elif not needed and self.listeners:
            for engine, ident, fn in self.listeners:
                sa.event.remove(engine, ident, fn)
            self.listeners.clear()

    def unit_queries(self) -> UnitQueries | None:
        app = self.app()
        if app is None or not has_app_context():
            return None
        unit = self.state.peek(app)
        if unit is None:
            return None
        if unit.queries is None:
            unit.queries = UnitQueries(self.settings.record)
        return unit.queries

    def make_listeners(self, name: str, role: str) -> list[tuple[str, t.Any]]:
        settings = self.settings
        captures = self.insight.captures

        def before(
            conn: sa.Connection,
            cursor: t.Any,
            statement: str,
            parameters: t.Any,
            context: t.Any,
            executemany: bool,
        ) -> None:
            if CONTROL.match(statement):
                return
            queries = self.unit_queries() if self.per_unit else None
            context._uow_queries = queries
            if queries is not None and settings.n_plus_one != "off":
                if context.execute_style is not ExecuteStyle.INSERTMANYVALUES:
                    count = queries.shapes.get(statement, 0) + 1
                    queries.shapes[statement] = count
                    if count == settings.threshold + 1:
                        self.report_repeats(statement, count)
            context._uow_start = time.perf_counter()

        def after(
            conn: sa.Connection,
            cursor: t.Any,
            statement: str,
            parameters: t.Any,
            context: t.Any,
            executemany: bool,
        ) -> None:
            start = getattr(context, "_uow_start", None)
            if start is None:
                return
            end = time.perf_counter()
            context._uow_start = None
            queries: UnitQueries | None = context._uow_queries
            duration = end - start
            slow = settings.slow_ms is not None and duration * 1000 > settings.slow_ms
            if queries is not None:
                total = queries.totals.get(name)
                if total is None:
                    total = queries.totals[name] = [0, 0.0]
                total[0] += 1
                total[1] += duration
            keep = queries is not None and queries.records is not None
            if not (keep or captures or slow):
                return
            rowcount = getattr(cursor, "rowcount", -1)
            record = QueryRecord(
                statement,
                parameters,
                start,
                end,
                describe(call_site()),
                name,
                None if rowcount is None or rowcount < 0 else rowcount,
                role,
            )
            if keep:
                queries.records.append(record)  # type: ignore[union-attr]
            for capture in captures:
                capture.append(record)
            if slow:
                self.log_slow(record)

        return [("before_cursor_execute", before), ("after_cursor_execute", after)]

    def report_repeats(self, statement: str, count: int) -> None:
        frame = call_site()
        relationship = lazy_relationship()
        if relationship is not None:
            hint = (
                f"It lazily loads {relationship!r} once per object: load it with"
                " the query that loads the objects, for example"
                f" .options(sqlalchemy.orm.selectinload({relationship})) or"
                " joinedload(), to make it one statement."
            )
        else:
            hint = (
                "Fetch the rows in one statement (with an IN clause or a join)"
                " instead of one per item."
            )
        sql = " ".join(statement.split())
        message = (
            f"The same statement ran {count} times in one unit of work"
            f" ({where()}), last at {describe(frame)}. {hint} Set"
            " 'UOW_N_PLUS_ONE_THRESHOLD' to allow more repeats, or"
            f" 'UOW_N_PLUS_ONE' to 'off'. The statement: {sql}"
        )
        if self.settings.n_plus_one == "raise":
            raise NPlusOneWarning(message)
        filename, lineno, module = "<unknown>", 0, None
        if frame is not None:  # Shown at the call site, not at flask_uow's.
            filename, lineno = frame.f_code.co_filename, frame.f_lineno
            module = frame.f_globals.get("__name__")
        warnings.warn_explicit(message, NPlusOneWarning, filename, lineno, module)

    def log_slow(self, record: QueryRecord) -> None:
        message = "flask_uow: a statement took %.1f ms (%s), at %s: %s"
        args: list[t.Any] = [
            record.duration * 1000,
            where(),
            record.location,
            record.statement,
        ]
        if self.settings.slow_parameters:
            message += " Parameters: %r"
            args.append(record.parameters)
        self.logger.warning(message, *args, extra={"uow_query": record})

    def add_server_timing(self, response: Response) -> Response:
        app = self.app()
        unit = None if app is None else self.state.peek(app)
        queries = None if unit is None else unit.queries
        totals = {} if queries is None else queries.totals
        names = list(self.state.engines)
        metrics = []
        for name in names:
            count, seconds = totals.get(name, (0, 0.0))
            metric = "db" if len(names) == 1 else f"db-{_token(name)}"
            noun = "query" if count == 1 else "queries"
            metrics.append(
                f'{metric};dur={seconds * 1000:.3f};desc="{int(count)} {noun}"'
            )
        response.headers.add("Server-Timing", ", ".join(metrics))
        return response


def _token(name: str) -> str:
    """An engine name as a Server-Timing metric name (an HTTP token)."""
    return re.sub(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]", "_", name)
