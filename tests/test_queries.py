"""Query insight: recorded statements, N+1 detection, Server-Timing and the
slow-statement log.
"""

from __future__ import annotations

import logging
import pathlib
import re
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import render_template_string
from flask import stream_with_context

import flask_uow
from flask_uow import get_recorded_queries
from flask_uow import Isolation
from flask_uow import NPlusOneWarning
from flask_uow import QueryRecord
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Child
from .models import Item
from .models import Parent

HERE = pathlib.Path(__file__).name


def listeners(engine: sa.Engine) -> int:
    """How many cursor listeners the engine has."""
    return len(engine.dispatch.before_cursor_execute) + len(
        engine.dispatch.after_cursor_execute
    )


def add_parents(app: Flask, uow: UnitOfWork, n: int = 20) -> None:
    with app.app_context(), uow.transaction() as session:
        session.add_all(
            [Parent(name=f"p{i}", children=[Child(), Child()]) for i in range(n)]
        )


def count_children(app: Flask, uow: UnitOfWork) -> None:
    """A view at '/children' that lazily loads each parent's children."""

    @app.get("/children")
    def children() -> dict[str, int]:
        parents = uow.session.scalars(sa.select(Parent).order_by(Parent.id))
        return {"children": sum(len(parent.children) for parent in parents)}


# Recording


def test_records_each_statement_of_the_request(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Each statement of a request is recorded with Flask-SQLAlchemy's fields,
    the engine name, the row count and the view's line; BEGIN and COMMIT are
    not statements.
    """
    app = make_app(TESTING=True)
    seen: list[QueryRecord] = []

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        uow.session.flush()
        uow.session.scalar(sa.select(sa.func.count()).select_from(Item))
        seen.extend(uow.recorded_queries)
        assert get_recorded_queries() == uow.recorded_queries
        return name

    assert app.test_client().post("/items/a").status_code == 200
    assert db.names() == ["a"]
    insert, count = seen
    assert insert.statement.startswith("INSERT INTO items")
    assert "a" in str(insert.parameters)
    assert insert.rowcount == 1
    assert count.statement.startswith("SELECT count(*)")
    for record in seen:
        assert record.engine == "default"
        assert record.end_time >= record.start_time
        assert record.duration == record.end_time - record.start_time
        assert re.fullmatch(rf".*{HERE}:\d+ \(add\)", record.location)


def test_location_of_a_lazy_load_in_a_template(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A lazy load run by a template is located in the template, not in
    Jinja's code.
    """
    app = make_app()
    add_parents(app, uow, 1)

    @app.get("/")
    def index() -> str:
        parent = uow.session.scalars(sa.select(Parent)).one()
        return render_template_string("{{ parent.children | length }}", parent=parent)

    with uow.assert_num_queries(2) as records:
        assert app.test_client().get("/").text == "2"
    assert re.fullmatch(rf".*{HERE}:\d+ \(index\)", records[0].location)
    assert records[1].location.startswith("<template>:")


def test_each_unit_has_its_own_records(
    make_app: AppFactory, uow: UnitOfWork, backend: str
) -> None:
    """A request sees only its own statements; outside requests, each
    application context has its own; a context that ran none has none.
    """
    app = make_app(UOW_RECORD_QUERIES=True)

    @app.get("/<int:n>")
    def run(n: int) -> list[str]:
        for i in range(n):
            uow.session.execute(sa.select(sa.literal(i)))
        return [record.statement for record in uow.recorded_queries]

    client = app.test_client()
    assert len(client.get("/2").json) == 2  # type: ignore[arg-type]
    assert len(client.get("/1").json) == 1  # type: ignore[arg-type]
    with app.app_context():
        assert uow.recorded_queries == []
        uow.session.execute(sa.select(Item))
        assert len(get_recorded_queries()) == 1
    with app.app_context():
        assert get_recorded_queries() == []


def test_recording_follows_debug_and_testing(make_app: AppFactory) -> None:
    """Recording and N+1 detection are on by default in debug or testing mode
    only; off, no listener is attached to the engines at all.
    """
    for config, on in [({}, False), ({"TESTING": True}, True), ({"DEBUG": True}, True)]:
        app = make_app(**config)
        assert app.config["UOW_RECORD_QUERIES"] is on
        assert app.config["UOW_N_PLUS_ONE"] == ("warn" if on else "off")
        with app.app_context():
            engine = app.extensions["uow"].engine
        assert bool(listeners(engine)) is on
    app = make_app(TESTING=True, UOW_RECORD_QUERIES=False, UOW_N_PLUS_ONE="off")
    with app.app_context():
        assert listeners(app.extensions["uow"].engine) == 0
        uow = app.extensions["uow"]
        uow.session.execute(sa.select(Item))
        assert uow.recorded_queries == []


def test_statements_outside_a_unit_are_not_recorded(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A statement run with no unit of work, with or without an application
    context, runs normally and is recorded nowhere.
    """
    app = make_app(UOW_RECORD_QUERIES=True, UOW_SERVER_TIMING=True)
    with app.app_context():
        engine = uow.engine
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.literal(1))).scalar() == 1
        assert uow.recorded_queries == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.literal(2))).scalar() == 2


def test_isolation_savepoints_are_not_recorded(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Under test isolation, the SAVEPOINT and RELEASE statements of the
    isolation are neither recorded nor counted.
    """
    app = make_app(UOW_RECORD_QUERIES=True)
    seen: list[str] = []

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        uow.session.flush()
        seen.extend(record.statement for record in uow.recorded_queries)
        return name

    with Isolation(app), uow.assert_num_queries(1) as counted:
        assert app.test_client().post("/items/a").status_code == 200
    assert [record.statement for record in counted] == seen
    assert len(seen) == 1 and seen[0].startswith("INSERT")
    assert db.names() == []


def test_get_recorded_queries_needs_an_app(make_app: AppFactory) -> None:
    """get_recorded_queries says what is missing: a context, or the extension."""
    with pytest.raises(RuntimeError, match="needs an application context"):
        get_recorded_queries()
    with Flask("bare").app_context():
        with pytest.raises(RuntimeError, match="not set up with flask_uow"):
            get_recorded_queries()


# N+1 detection


def test_lazy_load_in_a_loop_warns_once(make_app: AppFactory, uow: UnitOfWork) -> None:
    """Lazily loading the children of 20 parents in a loop warns once, at the
    loop's line, naming the relationship and selectinload.
    """
    app = make_app(TESTING=True)
    add_parents(app, uow)
    count_children(app, uow)
    with pytest.warns(NPlusOneWarning) as caught:
        response = app.test_client().get("/children")
    assert response.json == {"children": 40}
    [warning] = caught
    message = str(warning.message)
    assert "ran 11 times in one unit of work (GET /children)" in message
    assert "selectinload(Parent.children)" in message
    assert "FROM children" in message
    assert warning.filename == __file__
    assert isinstance(warning.message, UserWarning)


def test_each_unit_is_checked_on_its_own(make_app: AppFactory, uow: UnitOfWork) -> None:
    """Repeats are counted per unit of work: each request over the threshold
    warns once; eager loading, or repeats up to the threshold, do not warn.
    """
    app = make_app(TESTING=True)
    add_parents(app, uow, 10)
    count_children(app, uow)

    @app.get("/eager")
    def eager() -> dict[str, int]:
        query = sa.select(Parent).options(orm.selectinload(Parent.children))
        parents = uow.session.scalars(query)
        return {"children": sum(len(parent.children) for parent in parents)}

    client = app.test_client()
    assert client.get("/children").json == {"children": 20}  # 10 repeats: fine.
    add_parents(app, uow, 1)
    with pytest.warns(NPlusOneWarning) as caught:
        client.get("/children")
        client.get("/children")
    assert len(caught) == 2
    assert client.get("/eager").json == {"children": 22}


def test_repeated_core_statement_gets_a_general_hint(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A Core statement repeated with different parameters is reported too,
    with a hint to fetch the rows at once; outside requests it says so.
    """
    app = make_app(UOW_N_PLUS_ONE="warn", UOW_N_PLUS_ONE_THRESHOLD=3)
    with app.app_context(), pytest.warns(NPlusOneWarning, match="IN clause") as w:
        for i in range(5):
            uow.session.execute(sa.select(Item).where(Item.id == i))
    assert "outside a request" in str(w[0].message)


def test_raise_mode_fails_the_request(make_app: AppFactory, uow: UnitOfWork) -> None:
    """With 'raise', the repeated statement raises instead of running."""
    app = make_app(TESTING=True, UOW_N_PLUS_ONE="raise")
    add_parents(app, uow)
    count_children(app, uow)
    with pytest.raises(NPlusOneWarning, match="Parent.children"):
        app.test_client().get("/children")


def test_detection_can_be_off(make_app: AppFactory, uow: UnitOfWork) -> None:
    """With 'off', repeats are not reported, even with recording on."""
    app = make_app(TESTING=True, UOW_N_PLUS_ONE="off")
    add_parents(app, uow)
    count_children(app, uow)
    assert app.test_client().get("/children").json == {"children": 40}


def test_inserting_many_rows_is_not_a_repeat(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """The batches of one many-row INSERT are not reported as repeats."""
    app = make_app(UOW_N_PLUS_ONE="raise", UOW_N_PLUS_ONE_THRESHOLD=1)
    with app.app_context(), uow.transaction() as session:
        session.execute(
            sa.insert(Item).execution_options(insertmanyvalues_page_size=2),
            [{"name": f"n{i}"} for i in range(6)],
        )
        session.add_all([Item(name=f"m{i}") for i in range(6)])
    assert len(db.names()) == 12


# Server-Timing


def server_timing(response: t.Any) -> list[tuple[str, float, str]]:
    [header] = response.headers.getlist("Server-Timing")
    metrics = []
    for part in header.split(", "):
        match = re.fullmatch(r'([\w-]+);dur=([\d.]+);desc="([^"]*)"', part)
        assert match is not None, part
        metrics.append((match[1], float(match[2]), match[3]))
    return metrics


def test_server_timing_counts_the_request(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """The response carries the database time and statement count, the
    INSERT flushed by the end-of-request commit included.
    """
    app = make_app(UOW_SERVER_TIMING=True)

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.scalars(sa.select(Item))
        uow.session.add(Item(name=name))
        return name

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    client = app.test_client()
    [(name, duration, desc)] = server_timing(client.post("/items/a"))
    assert (name, desc) == ("db", "2 queries")
    assert duration > 0
    assert db.names() == ["a"]
    assert server_timing(client.get("/nodb")) == [("db", 0.0, "0 queries")]


def test_server_timing_per_engine(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path, db_url: str
) -> None:
    """With several engines, each has its own metric."""
    app = make_app(
        UOW_SERVER_TIMING=True,
        UOW_ENGINES={"default": db_url, "audit log": f"sqlite:///{tmp_path}/a.db"},
    )

    @app.get("/")
    def index() -> str:
        uow.session.execute(sa.select(sa.literal(1)))
        with uow.engines["audit log"].connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
        return "ok"

    metrics = server_timing(app.test_client().get("/"))
    assert [(name, desc) for name, _, desc in metrics] == [
        ("db-default", "1 query"),
        ("db-audit_log", "1 query"),
    ]


def test_streamed_response_reports_what_ran_before(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A streamed response reports the statements run before it started."""
    app = make_app(UOW_SERVER_TIMING=True)

    @app.get("/stream")
    def stream() -> t.Any:
        uow.session.execute(sa.select(Item))

        def rows() -> t.Iterator[str]:
            for i in range(3):
                yield str(uow.session.execute(sa.select(sa.literal(i))).scalar())

        return app.response_class(stream_with_context(rows()))

    response = app.test_client().get("/stream")
    assert response.get_data(as_text=True) == "012"
    response.close()
    assert [desc for _, _, desc in server_timing(response)] == ["1 query"]


# Slow statements


def test_slow_statements_are_logged(
    make_app: AppFactory, uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement slower than UOW_SLOW_QUERY_MS is logged with the request
    and call site, without its parameters unless they are enabled.
    """
    for parameters in (False, True):
        app = make_app(UOW_SLOW_QUERY_MS=0, UOW_SLOW_QUERY_PARAMETERS=parameters)

        @app.get("/")
        def index() -> str:
            uow.session.scalars(sa.select(Item).where(Item.name == "private"))
            return "ok"

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=app.logger.name):
            app.test_client().get("/")
        [record] = caplog.records
        message = record.getMessage()
        assert "GET /" in message
        assert f"{HERE}:" in message and "(index)" in message
        assert "FROM items" in message
        assert ("private" in message) is parameters
        assert record.__dict__["uow_query"].statement in message


def test_fast_statements_are_not_logged(
    make_app: AppFactory, uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement faster than the limit is not logged."""
    app = make_app(UOW_SLOW_QUERY_MS=60_000)
    with caplog.at_level(logging.WARNING, logger=app.logger.name):
        with app.app_context():
            uow.session.execute(sa.select(Item))
    assert caplog.records == []


# Configuration


@pytest.mark.parametrize(
    ("key", "value", "error", "text"),
    [
        ("UOW_RECORD_QUERIES", "yes", TypeError, "True or False"),
        ("UOW_SERVER_TIMING", 1, TypeError, "True or False"),
        ("UOW_SLOW_QUERY_PARAMETERS", None, TypeError, "True or False"),
        ("UOW_N_PLUS_ONE", "loud", ValueError, "'warn', 'raise' or 'off'"),
        ("UOW_N_PLUS_ONE_THRESHOLD", "10", TypeError, "must be an int"),
        ("UOW_N_PLUS_ONE_THRESHOLD", True, TypeError, "must be an int"),
        ("UOW_N_PLUS_ONE_THRESHOLD", 0, ValueError, "1 or more"),
        ("UOW_N_PLUS_ONE_THRESHOLD", -3, ValueError, "1 or more"),
        ("UOW_SLOW_QUERY_MS", "100", TypeError, "milliseconds or None"),
        ("UOW_SLOW_QUERY_MS", -5, ValueError, "negative"),
    ],
)
def test_bad_config_is_refused(
    make_app: AppFactory,
    uow: UnitOfWork,
    key: str,
    value: object,
    error: type[Exception],
    text: str,
) -> None:
    """A wrong type or value is an error at init_app naming the key."""
    app = make_app(init=False, **{key: value})
    with pytest.raises(error, match=re.escape(text)) as caught:
        uow.init_app(app)
    assert repr(key) in str(caught.value)
    assert "uow" not in app.extensions


def test_public_names() -> None:
    """The query-insight names are exported."""
    for name in ("NPlusOneWarning", "QueryRecord", "get_recorded_queries"):
        assert name in flask_uow.__all__
