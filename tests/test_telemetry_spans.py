"""OpenTelemetry spans for units of work (issue 23, section 1): the unit's
span and its outcome, transaction blocks and their retries, the COMMIT, and
how they nest under the Flask instrumentation's request span and above the
SQLAlchemy instrumentation's statement spans.

Specification tests, written before the feature: they fail until phase B.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import pathlib

import sqlalchemy as sa
from flask import Flask
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode

from flask_uow import is_transient_error
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Counter
from .otel import attrs
from .otel import Telemetry
from .telemetry_apps import traced_app
from .test_retries import WriteLock


def test_a_committed_request_records_one_unit_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """A request whose unit commits records one 'flask_uow.unit' span with the
    outcome, statement count, engines, route and two-phase attributes.
    """
    app = traced_app(make_app, uow, db_url, backend)
    assert app.test_client().post("/items", data={"name": "a"}).status_code == 201
    assert db.names() == ["a"]
    unit = telemetry.one("flask_uow.unit")
    assert unit.kind == SpanKind.INTERNAL
    assert dict(unit.attributes or {}) == {
        "flask_uow.outcome": "commit",
        "flask_uow.statements": 1,
        "flask_uow.engines": ("default",),
        "flask_uow.route": "primary",
        "flask_uow.two_phase": False,
    }
    assert unit.status.status_code == StatusCode.UNSET


def test_a_request_without_the_database_records_no_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """A unit that never opened a session records nothing."""
    app = traced_app(make_app, uow, db_url, backend)
    assert app.test_client().get("/nothing").status_code == 200
    assert telemetry.spans() == []


def test_rolled_back_requests_say_rollback(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """A vetoed response and a failed view roll back: outcome 'rollback',
    status not ERROR (a rollback is a normal end).
    """
    app = traced_app(make_app, uow, db_url, backend)

    @app.post("/raises")
    def raises() -> str:
        uow.session.execute(sa.select(1))
        raise LookupError("the view failed")

    client = app.test_client()
    assert client.post("/veto").status_code == 409
    assert client.post("/raises").status_code == 500
    assert db.names() == []
    units = telemetry.named("flask_uow.unit")
    assert [attrs(u)["flask_uow.outcome"] for u in units] == [
        "rollback",
        "rollback",
    ]
    assert all(u.status.status_code != StatusCode.ERROR for u in units)


def test_a_refused_commit_says_aborted(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """When the guard refuses to COMMIT a transaction the database aborted,
    the outcome is 'aborted' and the span's status is ERROR, naming the error.
    """
    app = traced_app(make_app, uow, db_url, backend)
    assert app.test_client().post("/aborted").status_code == 500
    assert db.names() == []
    unit = telemetry.one("flask_uow.unit")
    assert attrs(unit)["flask_uow.outcome"] == "aborted"
    assert unit.status.status_code == StatusCode.ERROR
    assert "TransactionAbortedError" in (unit.status.description or "")
    assert telemetry.named("flask_uow.commit") == []  # No COMMIT was sent.


def test_a_failed_commit_says_error(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """A COMMIT the database refuses (a deferred constraint) gives outcome
    'error', ERROR status on the unit and on its 'flask_uow.commit' child,
    which records the exception.
    """
    app = traced_app(make_app, uow, db_url, backend)
    assert app.test_client().post("/commit-fails").status_code == 500
    unit = telemetry.one("flask_uow.unit")
    assert attrs(unit)["flask_uow.outcome"] == "error"
    assert unit.status.status_code == StatusCode.ERROR
    commit = telemetry.one("flask_uow.commit")
    assert commit.parent is not None
    assert commit.parent.span_id == unit.context.span_id
    assert commit.status.status_code == StatusCode.ERROR
    events = [e for e in commit.events if e.name == "exception"]
    assert events and attrs(events[0])["exception.type"].endswith("IntegrityError")


def test_the_commit_is_a_child_span_apart_from_the_work(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """The COMMIT is a 'flask_uow.commit' child of the unit, inside it in
    time, and the view's statements are not under it.
    """
    app = traced_app(make_app, uow, db_url, backend)
    with app.app_context():
        engines = list(uow.engines.values())
    with telemetry.sqlalchemy_instrumented(engines):
        app.test_client().post("/items", data={"name": "a"})
    unit = telemetry.one("flask_uow.unit")
    commit = telemetry.one("flask_uow.commit")
    assert commit in telemetry.children(unit)
    assert unit.start_time <= commit.start_time  # type: ignore[operator]
    assert commit.end_time <= unit.end_time  # type: ignore[operator]
    assert dict(commit.attributes or {}) == {
        "flask_uow.engines": ("default",),
        "flask_uow.two_phase": False,
    }
    inserts = [s for s in telemetry.descendants(unit) if s.name.startswith("INSERT")]
    assert inserts and all(s not in telemetry.descendants(commit) for s in inserts)


def test_spans_nest_under_flask_and_above_sqlalchemy(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """With both OpenTelemetry instrumentations on, the unit is a child of the
    Flask request span, and every statement span of the request is under the
    unit, in the same trace.
    """
    app = traced_app(make_app, uow, db_url, backend)
    with app.app_context():
        engines = list(uow.engines.values())
    with telemetry.flask_instrumented(app), telemetry.sqlalchemy_instrumented(engines):
        assert app.test_client().get("/items").status_code == 200
    request_span = telemetry.one("GET /items")
    unit = telemetry.one("flask_uow.unit")
    assert unit.parent is not None
    assert unit.parent.span_id == request_span.context.span_id
    statements = [
        s for s in telemetry.spans() if (s.attributes or {}).get("db.statement")
    ]
    assert statements, "the SQLAlchemy instrumentation recorded no statement"
    under_unit = telemetry.descendants(unit)
    assert all(s in under_unit for s in statements)
    assert {s.context.trace_id for s in telemetry.spans()} == {
        request_span.context.trace_id
    }


def test_a_transaction_block_records_its_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """An outermost uow.transaction() in a view is a 'flask_uow.transaction'
    child of the unit with one attempt, its own commit span under it; a
    nested block (a savepoint) records no span of its own.
    """
    app = traced_app(make_app, uow, db_url, backend)

    @app.post("/nested")
    def nested() -> str:
        with uow.transaction() as session:
            with uow.transaction():
                session.execute(sa.select(1))
        return "ok"

    client = app.test_client()
    assert client.post("/nested").status_code == 200
    unit = telemetry.one("flask_uow.unit")
    block = telemetry.one("flask_uow.transaction")
    assert block in telemetry.children(unit)
    assert dict(block.attributes or {}) == {
        "flask_uow.attempts": 1,
        "flask_uow.outcome": "commit",
    }
    assert [c.name for c in telemetry.children(block)] == ["flask_uow.commit"]


def test_a_block_outside_requests_is_a_root_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """In an app context outside requests (a CLI command, a job) the
    context's unit span has no parent and the block's span is its child.
    """
    app = traced_app(make_app, uow, db_url, backend)
    with app.app_context():
        with uow.transaction() as session:
            session.execute(sa.select(1))
    block = telemetry.one("flask_uow.transaction")
    unit = telemetry.one("flask_uow.unit")
    assert block in telemetry.children(unit)
    assert unit.parent is None


@contextlib.contextmanager
def first_attempt_fails(
    uow: UnitOfWork, app: Flask, db_url: str, backend: str
) -> cabc.Iterator[list[int]]:
    """Add a view at '/bump' whose transactional function's first attempt
    fails for real with a transient error, for the block: on PostgreSQL
    another client commits an update to the row the SERIALIZABLE attempt read
    (SQLSTATE 40001); on SQLite (in WAL mode, with no busy timeout) another
    connection holds the write lock until the retry is decided. Yields the
    attempts made.
    """
    attempts: list[int] = []
    other = sa.create_engine(db_url, poolclass=sa.NullPool)
    with other.begin() as conn:
        conn.execute(sa.insert(Counter).values(id=1, value=0))
    isolation = "SERIALIZABLE" if backend == "postgresql" else None

    @uow.transactional(retries=2, isolation_level=isolation)
    def bump() -> None:
        attempts.append(len(attempts) + 1)
        session = uow.session
        session.execute(sa.select(Counter.value)).all()
        if len(attempts) == 1 and backend == "postgresql":
            with other.begin() as conn:
                conn.execute(sa.update(Counter).values(value=10))
        session.execute(sa.update(Counter).values(value=Counter.value + 1))

    @app.post("/bump")
    def bump_view() -> str:
        bump()
        return "ok"

    try:
        if backend == "postgresql":
            yield attempts
            return
        with app.app_context():  # The first connection switches to WAL.
            uow.session.execute(sa.select(1))
        path = pathlib.Path(sa.make_url(db_url).database or "")
        with WriteLock(path) as lock:

            @uow.retry_classifier
            def release_then_retry(exc: BaseException) -> bool:
                lock.release()  # The other writer finishes; a retry succeeds.
                return is_transient_error(exc)

            yield attempts
    finally:
        other.dispose()


def test_retries_are_events_on_the_transaction_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """A block retried after a transient failure records attempts=2 and one
    'flask_uow.retry' event with the attempt, error class and SQLSTATE (on
    SQLite, the extended error name).
    """
    engine = {"connect_args": {"timeout": 0}} if backend == "sqlite" else {}
    app = traced_app(make_app, uow, db_url, backend, engine_options=engine)
    with first_attempt_fails(uow, app, db_url, backend) as attempts:
        assert app.test_client().post("/bump").status_code == 200
    assert attempts == [1, 2]
    assert db.scalar("SELECT value FROM counters") == (
        11 if backend == "postgresql" else 1
    )
    block = telemetry.one("flask_uow.transaction")
    assert attrs(block)["flask_uow.attempts"] == 2
    assert attrs(block)["flask_uow.outcome"] == "commit"
    (retry,) = [e for e in block.events if e.name == "flask_uow.retry"]
    assert attrs(retry)["flask_uow.attempt"] == 1
    assert attrs(retry)["exception.type"] == "sqlalchemy.exc.OperationalError"
    expected = "40001" if backend == "postgresql" else "SQLITE_BUSY"
    assert attrs(retry)["db.response.status_code"] == expected
