"""SQL that says where it came from (issue 23, section 3): sqlcommenter
comments on every statement of a unit, as the database receives them.

Specification tests, written before the feature: they fail until phase B.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import sys
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import stream_with_context

from flask_uow import UnitOfWork
from flask_uow._sqlcomment import parse_comment

from .conftest import AppFactory
from .conftest import Database
from .models import Item
from .otel import Telemetry
from .pgcluster import Server

#: Built to break out of the quoted value, the comment and the statement.
HOSTILE_RULE = "/q/*/--'\"\\;/<path:rest>"
HOSTILE_ENDPOINT = "e'*/ DROP TABLE items; /*"


def seen_by_sqlite(uow: UnitOfWork, app: Flask) -> list[str]:
    """Every statement text the SQLite library itself runs from now on."""
    seen: list[str] = []

    def trace(dbapi_connection: t.Any, record: object) -> None:
        dbapi_connection.set_trace_callback(seen.append)

    with app.app_context():
        sa.event.listen(uow.engine, "connect", trace)
    return seen


def commented_app(
    make_app: AppFactory, uow: UnitOfWork, db_url: str, **config: t.Any
) -> Flask:
    app = make_app(
        UOW_ENGINES={"default": {"url": db_url, "poolclass": sa.NullPool}}, **config
    )

    @app.get("/items/<int:id>", endpoint="item")
    def item(id: int) -> str:
        return str(uow.session.get(Item, id))

    @app.route(HOSTILE_RULE, endpoint=HOSTILE_ENDPOINT, methods=["GET"])
    def hostile(rest: str) -> str:
        return str(uow.session.scalar(sa.select(sa.func.count(Item.id))))

    return app


def user_statements(seen: cabc.Iterable[str]) -> list[str]:
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")
    return [s for s in seen if not s.lstrip().upper().startswith(control)]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_receives_the_comment(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """Each statement of a request reaches SQLite with the endpoint, the
    route and the method in a sqlcommenter comment, and no traceparent when
    OpenTelemetry is off.
    """
    app = commented_app(make_app, uow, db_url, UOW_SQL_COMMENTS=True)
    seen = seen_by_sqlite(uow, app)
    assert app.test_client().get("/items/7").status_code == 200
    statements = user_statements(seen)
    assert statements
    for statement in statements:
        assert parse_comment(statement) == {
            "controller": "item",
            "method": "GET",
            "route": "/items/<int:id>",
        }


@pytest.mark.parametrize("backend", ["sqlite"])
def test_location_names_the_calling_line(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """With UOW_SQL_COMMENTS = "location" the comment also has the file:line
    of the application code that ran the statement.
    """
    app = commented_app(make_app, uow, db_url, UOW_SQL_COMMENTS="location")
    seen = seen_by_sqlite(uow, app)

    @app.get("/here")
    def here() -> str:
        line = sys._getframe().f_lineno + 1
        uow.session.execute(sa.select(1))
        return str(line)

    response = app.test_client().get("/here")
    (statement,) = user_statements(seen)
    fields = parse_comment(statement)
    assert fields["location"] == f"{__file__}:{response.get_data(as_text=True)}"
    assert fields["controller"] == "here"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_pooled_connection_used_outside_units_sends_no_comment(
    make_app: AppFactory, uow: UnitOfWork, db_url: str
) -> None:
    """Once a unit ended, its connection, handed out again by the pool and
    used outside any unit, sends its statements as they are.
    """
    app = make_app(UOW_ENGINES={"default": db_url}, UOW_SQL_COMMENTS=True)
    seen = seen_by_sqlite(uow, app)
    uow.dispose_engines(app)  # Every connection from now on is traced.

    @app.get("/one")
    def one() -> str:
        return str(uow.session.execute(sa.select(sa.literal(1))).scalar())

    assert app.test_client().get("/one").status_code == 200
    with app.app_context():
        with uow.engine.connect() as conn:
            assert conn.execute(sa.select(sa.literal(2))).scalar() == 2
        pool = t.cast(sa.QueuePool, uow.engine.pool)
        assert pool.checkedin() == 1  # One connection, used twice.
    first, second = user_statements(seen)
    assert parse_comment(first)["controller"] == "one"
    assert parse_comment(second) == {}


def test_traceparent_is_the_active_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """With spans on, the comment's traceparent names the unit's trace and a
    span of it (W3C format, sampled).
    """
    app = commented_app(
        make_app, uow, db_url, UOW_SQL_COMMENTS=True, UOW_OPENTELEMETRY=True
    )
    texts: list[str] = []
    with app.app_context():
        sa.event.listen(
            uow.engine,
            "after_cursor_execute",
            lambda conn, cursor, statement, *a: texts.append(statement),
        )
    app.test_client().get("/items/1")
    unit = telemetry.one("flask_uow.unit")
    double = backend == "postgresql"
    (statement,) = user_statements(texts)
    version, trace_id, span_id, flags = parse_comment(statement, double_percent=double)[
        "traceparent"
    ].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # Sampled.
    assert int(trace_id, 16) == unit.context.trace_id
    ids = {s.context.span_id for s in [unit, *telemetry.descendants(unit)]}
    assert int(span_id, 16) in ids


def test_a_streamed_body_names_the_unit_span(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """The body of a streamed response runs after the Flask instrumentation
    ended the request's span and reset the current context: the statements
    of the body, like those of the view, name the unit's span in their
    traceparent; the unit's span lasts until the stream closes.
    """
    app = commented_app(
        make_app, uow, db_url, UOW_SQL_COMMENTS=True, UOW_OPENTELEMETRY=True
    )
    texts: list[str] = []
    with app.app_context():
        sa.event.listen(
            uow.engine,
            "after_cursor_execute",
            lambda conn, cursor, statement, *a: texts.append(statement),
        )

    @app.get("/stream")
    def stream() -> t.Any:
        uow.session.execute(sa.select(Item.id).where(Item.id == 0)).all()

        def rows() -> cabc.Iterator[str]:
            yield str(uow.session.scalar(sa.select(sa.func.count(Item.id))))

        return app.response_class(stream_with_context(rows()))

    with telemetry.flask_instrumented(app):
        response = app.test_client().get("/stream")
    assert response.get_data(as_text=True) == "0"
    unit = telemetry.one("flask_uow.unit")
    request_span = telemetry.one("GET /stream")
    assert unit.parent is not None
    assert unit.parent.span_id == request_span.context.span_id
    assert request_span.end_time <= unit.end_time  # type: ignore[operator]
    in_view, in_body = user_statements(texts)
    double = backend == "postgresql"
    assert "count" in in_body
    for statement in (in_view, in_body):
        traceparent = parse_comment(statement, double_percent=double)["traceparent"]
        assert int(traceparent.split("-")[2], 16) == unit.context.span_id


def test_nothing_user_controlled_closes_the_comment(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    db: Database,
    telemetry: Telemetry,
) -> None:
    """A route rule, an endpoint and trace headers built to close the
    comment leave the statement intact: it runs, the table is still there,
    and the fields read back exactly.
    """
    app = commented_app(
        make_app, uow, db_url, UOW_SQL_COMMENTS=True, UOW_OPENTELEMETRY=True
    )
    texts: list[str] = []
    with app.app_context():
        sa.event.listen(
            uow.engine,
            "after_cursor_execute",
            lambda conn, cursor, statement, *a: texts.append(statement),
        )
    headers = {
        "traceparent": "00-*/ DROP TABLE items; /*-'--",
        "tracestate": "a=*/,b='\\",
    }
    with telemetry.flask_instrumented(app):
        response = app.test_client().get("/q/*/--'\"\\;/x*/y", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert db.names() == []  # The table still exists.
    (statement,) = user_statements(texts)
    fields = parse_comment(statement, double_percent=backend == "postgresql")
    assert fields["route"] == HOSTILE_RULE
    assert fields["controller"] == HOSTILE_ENDPOINT
    assert statement.count("*/") == 1 and statement.rstrip().endswith("*/")


def backend_view(app: Flask, uow: UnitOfWork, db: Database) -> None:
    """Add views at '/activity' and '/other' that run one query, then read
    from a separate connection what pg_stat_activity shows of the view's
    connection, and ask the server, with EXPLAIN VERBOSE, for the query
    identifier of a statement sent with the comment.
    """

    def activity(n: int) -> dict[str, t.Any]:
        session = uow.session
        pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
        session.execute(sa.select(Item.name).where(Item.id == n)).all()
        with db.engine.connect() as conn:
            query = conn.execute(
                sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            ).scalar_one()
        plan = session.execute(
            sa.text("EXPLAIN (VERBOSE) SELECT name FROM items WHERE id = 1")
        ).scalars()
        (query_id,) = [
            line.split(":")[1].strip() for line in plan if "Query Identifier" in line
        ]
        return {"query": query, "query_id": query_id}

    app.add_url_rule("/activity/<int:n>", "activity", activity)
    app.add_url_rule("/other/<int:n>", "other", activity)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_stat_activity_shows_the_comment_and_the_same_query_id(
    make_app: AppFactory, uow: UnitOfWork, db_url: str, db: Database
) -> None:
    """PostgreSQL sees the comment (pg_stat_activity), and the query id it
    computes (compute_query_id), which pg_stat_statements groups by, is the
    same with and without comments and for different comments.
    """
    options = {"connect_args": {"options": "-c compute_query_id=on"}}
    ids = []
    for comments in (True, False):
        app = make_app(
            UOW_ENGINES={
                "default": {"url": db_url, "poolclass": sa.NullPool, **options}
            },
            UOW_SQL_COMMENTS=comments,
        )
        backend_view(app, uow, db)
        client = app.test_client()
        for path in ("/activity/1", "/other/2"):
            seen = client.get(path).get_json()
            if comments:
                fields = parse_comment(seen["query"])
                assert fields["controller"] == path.split("/")[1]
                assert fields["method"] == "GET"
            else:
                assert "/*" not in seen["query"]
            ids.append(seen["query_id"])
    assert len(ids) == 4 and len(set(ids)) == 1


#: Debian's PostgreSQL 15 server (package postgresql-15, which .ci/run
#: installs): the pgserver package's PostgreSQL has no contrib modules, so no
#: pg_stat_statements.
STATEMENTS_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
STATEMENTS_LIB = pathlib.Path("/usr/lib/postgresql/15/lib/pg_stat_statements.so")


@pytest.fixture(scope="session")
def pg_stat_statements_url() -> cabc.Iterator[sa.URL]:
    """A PostgreSQL server of its own that preloads pg_stat_statements,
    started from Debian's PostgreSQL 15 on a Unix socket for the test run.
    Missing, the test fails in CI and is skipped elsewhere.
    """
    if not (STATEMENTS_BIN / "postgres").exists() or not STATEMENTS_LIB.exists():
        message = (
            "No PostgreSQL server with pg_stat_statements: install Debian's"
            " 'postgresql-15' package (.ci/run does); the test starts its"
            f" server from {STATEMENTS_BIN}."
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = Server.single(
        STATEMENTS_BIN,
        {"shared_preload_libraries": "pg_stat_statements", "compute_query_id": "on"},
    )
    try:
        yield server.url()
    finally:
        server.remove()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_stat_statements_groups_commented_statements(
    make_app: AppFactory, uow: UnitOfWork, pg_stat_statements_url: sa.URL
) -> None:
    """Requests to different endpoints run one query with different comments;
    pg_stat_statements shows it as one entry with their total count, and the
    text it keeps is a commented one.
    """
    engine = sa.create_engine(pg_stat_statements_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            t.cast(sa.Table, Item.__table__).create(conn, checkfirst=True)
            conn.exec_driver_sql("SELECT pg_stat_statements_reset()")
        app = make_app(
            UOW_ENGINES={"default": {"url": pg_stat_statements_url}},
            UOW_SQL_COMMENTS=True,
        )
        for endpoint in ("a", "b", "c"):
            app.add_url_rule(
                f"/{endpoint}",
                endpoint,
                lambda: str(
                    uow.session.execute(sa.select(Item.name).where(Item.id == 1)).all()
                ),
            )
        for endpoint in ("a", "b", "c"):
            assert app.test_client().get(f"/{endpoint}").status_code == 200
        uow.dispose_engines(app)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT calls, query FROM pg_stat_statements"
                " WHERE query LIKE 'SELECT items.name%%'"
            ).all()
    finally:
        engine.dispose()
    assert [row.calls for row in rows] == [3]
    assert parse_comment(rows[0].query)["method"] == "GET"
