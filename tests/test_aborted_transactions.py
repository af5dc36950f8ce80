"""A transaction the database already aborted is never reported as committed:
failed savepoint releases, caught statement errors, lost connections.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import logging
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import after_commit
from flask_uow import before_commit
from flask_uow import is_transient_error
from flask_uow import TransactionAbortedError
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item


class Boom(Exception):
    pass


def fail_caught(session: orm.Session, backend: str) -> None:
    """Run a statement that fails in a way that makes the database abort the
    whole transaction, and catch its error, as careless code would.
    PostgreSQL aborts a transaction after any failed statement; SQLite rolls
    it back by itself when the database is full.
    """
    try:
        if backend == "postgresql":
            session.execute(sa.text("SELECT no_such_column FROM items"))
        else:
            pages = session.execute(sa.text("PRAGMA page_count")).scalar_one()
            session.execute(sa.text(f"PRAGMA max_page_count = {pages}"))
            session.execute(
                sa.insert(Item), [{"name": f"{n:050}"} for n in range(2000)]
            )
    except sa_exc.DBAPIError:
        return
    raise AssertionError("the statement did not fail")  # pragma: no cover


@pytest.fixture
def small_app(make_app: AppFactory, db_url: str) -> Flask:
    """An app whose connections are not pooled, so that a connection whose
    settings a test changed is not used again.
    """
    return make_app(UOW_ENGINES={"default": {"url": db_url, "poolclass": sa.NullPool}})


@pytest.fixture
def outcomes(small_app: Flask) -> cabc.Iterator[list[str]]:
    """What a user would see of a commit: the after_commit signal, in order
    with the on_commit callbacks that tests append.
    """
    seen: list[str] = []

    def committed(sender: Flask, **extra: t.Any) -> None:
        seen.append("after_commit")

    with after_commit.connected_to(committed, small_app):
        yield seen


def test_failed_release_is_rolled_back_and_the_outer_work_commits(
    flask_app: Flask, uow: UnitOfWork, db: Database, backend: str
) -> None:
    """A nested block whose RELEASE fails (a statement error was caught inside
    it) is rolled back for real; the outer block commits its own work and
    runs its callbacks.
    """
    sent: list[str] = []
    release_failed: list[bool] = []
    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="tintin"))
            uow.on_commit(lambda: sent.append("committed"))
            try:
                with uow.transaction():
                    session.add(Item(name="haddock"))
                    session.flush()
                    try:
                        session.execute(sa.text("SELECT no_such_col FROM items"))
                    except sa_exc.DBAPIError:
                        pass
            except sa_exc.DBAPIError:
                release_failed.append(True)  # PostgreSQL: InFailedSqlTransaction.
    assert sent == ["committed"]
    on_postgresql = backend == "postgresql"
    assert db.names() == (["tintin"] if on_postgresql else ["haddock", "tintin"])
    assert release_failed == ([True] if backend == "postgresql" else [])


def test_release_that_raises_leaves_none_of_the_block(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """When the RELEASE itself raises (here a driver failure injected through
    SQLAlchemy's event), the block's rows are rolled back by name and never
    committed by the outer block.
    """

    def fail(connection: sa.Connection, name: str, context: object) -> None:
        raise Boom("the driver failed to release the savepoint")

    with flask_app.app_context():
        sa.event.listen(uow.engine, "release_savepoint", fail, once=True)
        with uow.transaction() as session:
            session.add(Item(name="outer"))
            with pytest.raises(Boom):
                with uow.transaction():
                    session.add(Item(name="inner"))
                    session.flush()
            assert list(session.scalars(sa.select(Item.name))) == ["outer"]
    assert db.names() == ["outer"]


def test_savepoint_that_cannot_be_rolled_back_stops_the_commit(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When neither the RELEASE nor the rollback to the savepoint succeeds,
    the enclosing transaction raises instead of committing, rolls back, and
    runs no callback.
    """
    sent: list[str] = []

    def fail_release(connection: sa.Connection, name: str, context: object) -> None:
        raise Boom("release")

    def fail_rollback_to(connection: sa.Connection, *args: object) -> None:
        if str(args[1]).startswith("ROLLBACK TO SAVEPOINT"):
            raise Boom("rollback to")

    with flask_app.app_context():
        sa.event.listen(uow.engine, "release_savepoint", fail_release, once=True)
        sa.event.listen(uow.engine, "before_cursor_execute", fail_rollback_to)
        try:
            with pytest.raises(TransactionAbortedError) as excinfo:
                with uow.transaction() as session:
                    session.add(Item(name="outer"))
                    uow.on_commit(lambda: sent.append("committed"))
                    with pytest.raises(Boom, match="release"):
                        with uow.transaction():
                            session.add(Item(name="inner"))
                            session.flush()
        finally:
            sa.event.remove(uow.engine, "before_cursor_execute", fail_rollback_to)
    assert "savepoint could not be rolled back" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, Boom)
    assert not excinfo.value.connection_lost
    assert "the enclosing transaction will not commit" in caplog.text
    assert sent == []
    assert db.names() == []


def test_doomed_nested_block_raises_and_its_parent_may_still_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A nested block holding a savepoint that could not be rolled back raises
    at its end after rolling back its own savepoint; the block around it may
    catch that and commit its own work.
    """

    def fail_release(connection: sa.Connection, name: str, context: object) -> None:
        raise Boom("release")

    def fail_rollback_to(connection: sa.Connection, *args: object) -> None:
        if str(args[1]).startswith("ROLLBACK TO SAVEPOINT"):
            raise Boom("rollback to")

    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="outer"))
            with pytest.raises(TransactionAbortedError):
                with uow.transaction():
                    session.add(Item(name="middle"))
                    sa.event.listen(uow.engine, "release_savepoint", fail_release)
                    sa.event.listen(
                        uow.engine, "before_cursor_execute", fail_rollback_to
                    )
                    try:
                        with pytest.raises(Boom, match="release"):
                            with uow.transaction():
                                session.add(Item(name="inner"))
                                session.flush()
                    finally:
                        sa.event.remove(uow.engine, "release_savepoint", fail_release)
                        sa.event.remove(
                            uow.engine, "before_cursor_execute", fail_rollback_to
                        )
    assert db.names() == ["outer"]


@pytest.mark.parametrize("where", ["view", "block", "nested block", "before_commit"])
def test_caught_error_that_aborts_the_transaction_never_commits(
    small_app: Flask,
    uow: UnitOfWork,
    db: Database,
    backend: str,
    outcomes: list[str],
    where: str,
) -> None:
    """Whatever caught the error that made the database abort the transaction
    (the view, a block, a nested block, a before_commit receiver), the client
    gets no 2xx, no callback runs, no after_commit is sent, and no row stays.
    """
    handled: list[BaseException] = []

    @small_app.errorhandler(TransactionAbortedError)
    def aborted(e: TransactionAbortedError) -> tuple[str, int]:
        handled.append(e)
        return "not saved", 409

    def audit(sender: Flask, *, session: orm.Session, **extra: t.Any) -> None:
        fail_caught(session, backend)

    def work(session: orm.Session) -> None:
        session.add(Item(name="lost"))
        session.flush()
        uow.on_commit(lambda: outcomes.append("callback"))

    @small_app.post("/")
    def view() -> str:
        if where in ("view", "before_commit"):
            work(uow.session())
            if where == "view":
                fail_caught(uow.session(), backend)
        elif where == "block":
            with uow.transaction() as session:
                work(session)
                fail_caught(session, backend)
        else:
            with uow.transaction() as session:
                work(session)
                with uow.transaction():
                    session.add(Item(name="in nested block"))
                    uow.on_commit(lambda: outcomes.append("nested callback"))
                    fail_caught(session, backend)
        return "saved"

    receiving: t.ContextManager[object] = contextlib.nullcontext()
    if where == "before_commit":
        receiving = before_commit.connected_to(audit, small_app)
    with receiving:
        response = small_app.test_client().post("/")
    assert response.status_code >= 400
    assert outcomes == []
    assert db.names() == []
    if where in ("view", "block", "before_commit"):
        [error] = handled
        assert "nothing was committed" in str(error)


def test_explicit_commit_of_an_aborted_transaction_raises(
    small_app: Flask, uow: UnitOfWork, db: Database, backend: str, outcomes: list[str]
) -> None:
    """uow.session.commit() after a caught error that aborted the transaction
    raises, outside requests too, and the session can be rolled back and used.
    """
    with small_app.app_context():
        uow.session.add(Item(name="lost"))
        uow.session.flush()
        fail_caught(uow.session(), backend)
        with pytest.raises(TransactionAbortedError, match="nothing was committed"):
            uow.session.commit()
        uow.session.rollback()
    assert outcomes == []
    assert db.names() == []


def test_the_guard_does_not_stop_a_caught_error_that_aborted_nothing(
    flask_app: Flask, uow: UnitOfWork, db: Database, backend: str
) -> None:
    """On SQLite a failed statement leaves the transaction usable, so work
    around a caught error still commits there; on PostgreSQL it does not.
    """

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="kept"))
        uow.session.flush()
        try:
            uow.session.execute(sa.text("SELECT no_such_col FROM items"))
        except sa_exc.DBAPIError:
            pass
        return "saved"

    status = flask_app.test_client().post("/").status_code
    if backend == "sqlite":
        assert (status, db.names()) == (200, ["kept"])
    else:
        assert (status, db.names()) == (500, [])


def terminate(db: Database, session: orm.Session) -> None:
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    assert db.scalar("SELECT pg_terminate_backend(:pid, 5000)", pid=pid) is True


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "outermost"])
def test_lost_connection_hidden_by_a_caught_error_is_retried(
    flask_app: Flask,
    uow: UnitOfWork,
    db: Database,
    nested: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection killed while a block runs, whose error the view catches,
    is still recognised as lost at the commit, and the view is run again.
    """
    attempts: list[int] = []

    @flask_app.post("/")
    @uow.transactional(retries=3)
    def view() -> str:
        attempts.append(1)
        uow.session.add(Item(name=f"attempt{len(attempts)}"))
        uow.session.flush()
        if len(attempts) == 1:
            try:
                if nested:
                    with uow.transaction() as session:
                        terminate(db, session)
                        session.execute(sa.select(1))
                else:
                    terminate(db, uow.session())
                    uow.session.execute(sa.select(1))
            except sa_exc.DBAPIError:
                pass  # The docs' pattern: a failed nested block is caught.
        return "ok"

    with caplog.at_level(logging.INFO):
        response = flask_app.test_client().post("/")
    assert response.status_code == 200
    assert len(attempts) == 2
    assert db.names() == ["attempt2"]
    assert "retrying a transaction (retry 1) after TransactionAbortedError" in (
        caplog.text
    )


def test_lost_connection_is_found_in_the_cause_chain() -> None:
    """The default classifier calls an error transient when a lost connection
    is its cause or context, or when flask_uow says the connection was lost.
    """
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("gone"))
    lost.connection_invalidated = True
    try:
        try:
            raise lost
        except sa_exc.OperationalError as e:
            raise ValueError("wrapped") from e
    except ValueError as e:
        wrapped = e
    assert is_transient_error(wrapped)
    assert is_transient_error(TransactionAbortedError("x", connection_lost=True))
    assert not is_transient_error(TransactionAbortedError("x"))
    assert not is_transient_error(ValueError("plain"))


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_guard_reads_psycopg2_too(make_app: AppFactory, db: Database) -> None:
    """The transaction status is read from psycopg2 connections as well."""
    url = sa.make_url(db.url).set(drivername="postgresql+psycopg2")
    app = make_app(UOW_ENGINES={"default": url.render_as_string(False)})
    uow: UnitOfWork = app.extensions["uow"]

    @app.post("/")
    def view() -> str:
        uow.session.add(Item(name="lost"))
        fail_caught(uow.session(), "postgresql")
        return "saved"

    assert app.test_client().post("/").status_code == 500
    assert db.names() == []
