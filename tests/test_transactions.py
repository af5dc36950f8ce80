"""@uow.transactional and uow.transaction(): commit, savepoints, isolation
levels, on_commit callbacks.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask
from flask import Response

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item


class Boom(Exception):
    pass


def names(uow: UnitOfWork) -> list[str]:
    return list(uow.session.scalars(sa.select(Item.name).order_by(Item.name)))


def test_outermost_transaction_commits_or_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A block commits when it ends normally and re-raises after rolling back."""
    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="kept"))
        assert db.names() == ["kept"]
        with pytest.raises(Boom):
            with uow.transaction() as session:
                session.add(Item(name="lost"))
                session.flush()
                raise Boom()
        assert names(uow) == ["kept"]
    assert db.names() == ["kept"]


def test_transactional_function_outside_requests(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A decorated plain function commits in an app context, bare or called."""

    @uow.transactional
    def add(name: str) -> int:
        item = Item(name=name)
        uow.session.add(item)
        uow.session.flush()
        return item.id

    @uow.transactional()
    def add_and_fail(name: str) -> None:
        uow.session.add(Item(name=name))
        raise Boom()

    with flask_app.app_context():
        assert isinstance(add("a"), int)
        with pytest.raises(Boom):
            add_and_fail("b")
    assert db.names() == ["a"]


def test_transactional_view_commits_before_the_response_is_built(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """The view's transaction is committed when the view returns, so hooks
    that run before the end-of-request commit already see the row.
    """
    seen: list[list[str]] = []

    @flask_app.post("/items/<name>")
    @uow.transactional
    def add(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return name, 201

    @flask_app.after_request
    def look(response: Response) -> Response:
        seen.append(db.names())
        return response

    assert flask_app.test_client().post("/items/a").status_code == 201
    assert seen == [["a"]]


def test_transactional_view_commit_failure_reaches_error_handler(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A failed commit of a transactional view is handled like a view error."""

    @flask_app.errorhandler(sa_exc.IntegrityError)
    def conflict(e: sa_exc.IntegrityError) -> tuple[str, int]:
        return "conflict", 409

    @flask_app.post("/items/<name>")
    @uow.transactional
    def add(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return name, 201

    client = flask_app.test_client()
    assert client.post("/items/dup").status_code == 201
    assert client.post("/items/dup").get_data(as_text=True) == "conflict"
    assert db.names() == ["dup"]


def test_nested_transaction_is_a_savepoint(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An exception escaping a nested block undoes only that block."""

    @uow.transactional
    def inner(name: str, fail: bool) -> None:
        uow.session.add(Item(name=name))
        uow.session.flush()
        if fail:
            raise Boom()

    @flask_app.post("/")
    @uow.transactional
    def outer() -> str:
        uow.session.add(Item(name="outer"))
        inner("kept", fail=False)
        try:
            inner("undone", fail=True)
        except Boom:
            pass
        return ",".join(names(uow))

    assert flask_app.test_client().post("/").data == b"kept,outer"
    assert db.names() == ["kept", "outer"]


def test_released_savepoint_rolls_back_with_its_outer_transaction(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A savepoint taken after a read and released is still undone when the
    outer transaction rolls back (SQLite included).
    """
    with flask_app.app_context():
        with pytest.raises(Boom):
            with uow.transaction() as session:
                session.execute(sa.select(Item))
                with uow.transaction():
                    session.add(Item(name="inner"))
                assert names(uow) == ["inner"]
                raise Boom()
    assert db.names() == []


def test_durable_transaction_must_be_outermost(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """durable=True inside another transaction is an error; nothing commits."""
    with flask_app.app_context():
        with uow.transaction(durable=True) as session:
            session.add(Item(name="durable"))
        with pytest.raises(RuntimeError, match="Durable transactions must be"):
            with uow.transaction() as session:
                session.add(Item(name="outer"))
                with uow.transaction(durable=True):
                    pass  # pragma: no cover - never entered
    assert db.names() == ["durable"]


def test_work_before_the_outermost_transaction_is_committed_first(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A before_request hook's transaction does not stop a transactional view:
    its work is committed first, and the view's transaction starts fresh.
    """
    in_view: list[tuple[bool, list[str]]] = []

    @flask_app.before_request
    def load_user() -> None:
        uow.session.execute(sa.select(Item)).all()
        uow.session.add(Item(name="visit"))

    @flask_app.post("/")
    @uow.transactional(isolation_level="SERIALIZABLE")
    def view() -> str:
        in_view.append((uow.session.in_transaction(), db.names()))
        uow.session.add(Item(name="view"))
        raise Boom()

    assert flask_app.test_client().post("/").status_code == 500
    assert in_view == [(True, ["visit"])]
    assert db.names() == ["visit"]


def test_prior_work_of_a_failed_unit_is_rolled_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Prior work is rolled back when the unit is already marked to roll back."""

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="discarded"))
        uow.session.flush()
        uow.mark_rollback_only()
        with uow.transaction() as session:
            session.add(Item(name="explicit"))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert db.names() == ["explicit"]


def test_mark_rollback_only_ends_the_innermost_transaction(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Inside a transaction, mark_rollback_only rolls back just that one."""
    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="outer"))
            with uow.transaction():
                session.add(Item(name="inner"))
                uow.mark_rollback_only()
        with uow.transaction() as session:
            session.add(Item(name="dry-run"))
            uow.mark_rollback_only()
    assert db.names() == ["outer"]


def isolation_query(backend: str) -> str:
    if backend == "postgresql":
        return "SHOW transaction_isolation"
    return "PRAGMA read_uncommitted"


@pytest.mark.parametrize(
    ("backend", "level", "inside", "after"),
    [
        ("postgresql", "SERIALIZABLE", "serializable", "read committed"),
        ("postgresql", "repeatable_read", "repeatable read", "read committed"),
        ("sqlite", "READ UNCOMMITTED", 1, 0),
    ],
)
def test_isolation_level_applies_to_one_transaction(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    level: str,
    inside: object,
    after: object,
) -> None:
    """The level holds inside the transaction; the next transaction on the
    same pooled connection is back to the engine's default.
    """
    engine_options = {"url": db_url, "pool_size": 1, "max_overflow": 0}
    app = make_app(UOW_ENGINES={"default": engine_options})
    query = sa.text(isolation_query(backend))
    connections: list[object] = []

    def current() -> object:
        connections.append(uow.session.connection().connection.dbapi_connection)
        return uow.session.execute(query).scalar()

    @app.get("/isolated")
    @uow.transactional(isolation_level=level)
    def isolated() -> str:
        return str(current())

    @app.get("/plain")
    def plain() -> str:
        return str(current())

    client = app.test_client()
    assert client.get("/isolated").get_data(as_text=True) == str(inside)
    assert client.get("/plain").get_data(as_text=True) == str(after)
    assert connections[0] is connections[1]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_isolation_level_the_dialect_lacks_is_its_error(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A level the database does not support (SQLite has no READ COMMITTED)
    fails with SQLAlchemy's error before any work.
    """
    with flask_app.app_context():
        with pytest.raises(sa_exc.ArgumentError, match="READ COMMITTED"):
            with uow.transaction(isolation_level="READ COMMITTED"):
                pass  # pragma: no cover - never entered


def test_isolation_level_of_a_nested_transaction_is_an_error(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Only the outermost transaction may set the isolation level."""
    with flask_app.app_context():
        with pytest.raises(RuntimeError, match="Give it to the outermost"):
            with uow.transaction() as session:
                session.add(Item(name="outer"))
                with uow.transaction(isolation_level="SERIALIZABLE"):
                    pass  # pragma: no cover - never entered
    assert db.names() == []


def test_on_commit_runs_after_the_outermost_commit_in_order(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Callbacks run in registration order once the data is committed, and
    those of a rolled back savepoint are dropped.
    """
    calls: list[tuple[str, list[str]]] = []

    def record(label: str) -> cabc.Callable[[], None]:
        return lambda: calls.append((label, db.names()))

    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="a"))
            uow.on_commit(record("first"))
            with uow.transaction():
                uow.on_commit(record("released"))
            try:
                with uow.transaction():
                    uow.on_commit(record("rolled back"))
                    raise Boom()
            except Boom:
                pass
            uow.on_commit(record("last"))
            assert calls == []
    assert calls == [
        ("first", ["a"]),
        ("released", ["a"]),
        ("last", ["a"]),
    ]


def test_on_commit_never_runs_on_rollback(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A rolled back transaction or request runs none of its callbacks."""
    calls: list[str] = []

    @flask_app.post("/fail")
    def fail() -> tuple[str, int]:
        uow.on_commit(lambda: calls.append("request"))
        return "no", 400

    assert flask_app.test_client().post("/fail").status_code == 400
    with flask_app.app_context():
        with pytest.raises(Boom):
            with uow.transaction():
                uow.on_commit(lambda: calls.append("block"))
                raise Boom()
    assert calls == []


def test_on_commit_in_a_request_runs_after_the_request_commits(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Outside a transaction, the end-of-request commit runs the callbacks."""
    calls: list[list[str]] = []

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="a"))
        uow.on_commit(lambda: calls.append(db.names()))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert calls == [["a"]]


def test_failing_callback_is_logged_and_the_others_run(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A callback that raises is logged; the commit and response stand."""
    calls: list[str] = []

    def broken() -> None:
        raise Boom("mail server down")

    @flask_app.post("/")
    def view() -> tuple[str, int]:
        uow.session.add(Item(name="a"))
        uow.on_commit(broken)
        uow.on_commit(lambda: calls.append("second"))
        return "created", 201

    with caplog.at_level(logging.ERROR):
        response = flask_app.test_client().post("/")
    assert (response.status_code, response.data) == (201, b"created")
    assert calls == ["second"]
    assert db.names() == ["a"]
    [record] = [r for r in caplog.records if "on_commit callback" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is Boom


def test_callback_writes_in_its_own_transaction(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A callback's own transaction commits; writes without one, made after the
    request's commit, are rolled back.
    """

    def audited() -> None:
        with uow.transaction() as session:
            session.add(Item(name="audit"))
        uow.session.add(Item(name="stray"))

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="a"))
        uow.on_commit(audited)
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert db.names() == ["a", "audit"]


def test_callback_after_an_explicit_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A session.commit() of the user's also makes waiting callbacks ready."""
    calls: list[list[str]] = []
    with flask_app.app_context():
        uow.session.add(Item(name="a"))
        uow.on_commit(lambda: calls.append(db.names()))
        uow.session.commit()
    assert calls == [["a"]]


async def _async_body(uow: UnitOfWork, name: str) -> str:
    uow.session.add(Item(name=name))
    return name


def test_async_transactional_view(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """async def functions are decorated and awaited by Flask."""

    @flask_app.post("/items/<name>")
    @uow.transactional(retries=1)
    async def add(name: str) -> str:
        return await _async_body(uow, name)

    @flask_app.post("/fail")
    @uow.transactional
    async def fail() -> str:
        await _async_body(uow, "never")
        raise Boom()

    client = flask_app.test_client()
    assert client.post("/items/a").data == b"a"
    assert client.post("/fail").status_code == 500
    assert db.names() == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"retries": -1}, ValueError, r"retries=-1 is negative\. Use 0"),
        ({"retries": 1.5}, TypeError, r"retries=1\.5 must be an int"),
        ({"retries": True}, TypeError, r"retries=True must be an int"),
        ({"isolation_level": "CHAOS"}, ValueError, r"'CHAOS' is not an isolation"),
        ({"isolation_level": "AUTOCOMMIT"}, ValueError, r"Use one of"),
    ],
)
def test_bad_transactional_arguments(
    uow: UnitOfWork, kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    """Bad arguments fail at decoration time, naming the argument."""
    with pytest.raises(error, match=message):
        uow.transactional(**kwargs)


def generate() -> cabc.Iterator[int]:
    yield 1


async def agenerate() -> cabc.AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize("target", [generate, agenerate, 42])
def test_transactional_refuses_generators_and_non_callables(
    uow: UnitOfWork, target: t.Any
) -> None:
    """Generators and non-callables are refused when decorated."""
    with pytest.raises(TypeError, match="'transactional' (cannot decorate|decorates)"):
        uow.transactional(target)


def test_transaction_refuses_retries(flask_app: Flask, uow: UnitOfWork) -> None:
    """uow.transaction(retries=...) explains that a block cannot be re-run."""
    with flask_app.app_context():
        with pytest.raises(TypeError, match=r"does not take 'retries'"):
            uow.transaction(retries=3)
        with pytest.raises(TypeError, match=r"unexpected arguments 'nested'"):
            uow.transaction(nested=True)


def test_use_outside_an_app_context_is_an_error(uow: UnitOfWork) -> None:
    """Transactions and callbacks need an application context."""

    @uow.transactional
    def work() -> None:
        pass  # pragma: no cover - never called

    block = uow.transaction()  # Made anywhere, entered in a context.
    for call in (work, block.__enter__, lambda: uow.on_commit(print)):
        with pytest.raises(RuntimeError, match="Working outside of application"):
            call()


def test_on_commit_needs_a_callable(flask_app: Flask, uow: UnitOfWork) -> None:
    """on_commit refuses what it cannot call."""
    with flask_app.app_context():
        with pytest.raises(TypeError, match="'on_commit' needs a function"):
            uow.on_commit("send_mail")  # type: ignore[arg-type]


def test_failed_savepoint_release_undoes_only_the_savepoint(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A nested block whose final flush fails raises, and the outer
    transaction can still commit its own work.
    """
    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="a"))
            with pytest.raises(sa_exc.IntegrityError):
                with uow.transaction():
                    session.add(Item(name="a"))
            session.add(Item(name="b"))
    assert db.names() == ["a", "b"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_savepoint_rollback_on_a_lost_connection_keeps_the_error(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the connection dies inside a nested block, the block's own
    exception is the one that propagates; the failed rollback is logged.
    """
    with flask_app.app_context():
        with pytest.raises(Boom):
            with uow.transaction() as session:
                session.add(Item(name="outer"))
                with uow.transaction():
                    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                    db.scalar("SELECT pg_terminate_backend(:pid, 5000)", pid=pid)
                    raise Boom()
    assert "rolling back a savepoint failed" in caplog.text
    assert db.names() == []


def test_callbacks_of_a_rollback_without_statements_never_run(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A transaction that rolls back before running any statement drops its
    callbacks; a later commit does not run them.
    """
    calls: list[str] = []
    with flask_app.app_context():
        with pytest.raises(Boom), uow.transaction():
            uow.on_commit(lambda: calls.append("dropped"))
            raise Boom()
        with uow.transaction():
            uow.on_commit(lambda: calls.append("dry run"))
            uow.mark_rollback_only()
        with uow.transaction() as session:
            session.add(Item(name="a"))
    assert calls == []


def test_prior_callbacks_do_not_join_the_new_transaction(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Callbacks made ready by committing the prior work run after the new
    transaction, so it still starts fresh at its isolation level.
    """
    order: list[str] = []

    def stray_write() -> None:
        order.append("callback")
        uow.session.add(Item(name="stray"))

    @flask_app.before_request
    def visit() -> None:
        uow.session.add(Item(name="visit"))
        uow.on_commit(stray_write)

    @flask_app.post("/")
    @uow.transactional(isolation_level="SERIALIZABLE")
    def view() -> str:
        order.append("view")
        uow.session.add(Item(name="view"))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert order == ["view", "callback"]
    assert db.names() == ["stray", "view", "visit"]


def test_callbacks_run_at_teardown_may_use_the_unit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A callback made ready by an explicit commit runs when the context ends,
    can open a transaction, and leaves no connection behind.
    """

    def follow_up() -> None:
        with uow.transaction() as session:
            session.add(Item(name="follow-up"))
        uow.session.add(Item(name="stray"))

    with flask_app.app_context():
        uow.session.add(Item(name="a"))
        uow.on_commit(follow_up)
        uow.session.commit()
    assert db.names() == ["a", "follow-up"]
