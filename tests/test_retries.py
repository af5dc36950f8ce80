"""Retrying transactions: which errors are transient, how often a function is
run again, and never after a COMMIT whose outcome is unknown.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import pathlib
import sqlite3
import threading

import pymysql
import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import is_transient_error
from flask_uow import UnitOfWork
from flask_uow._retry import backoff

from .conftest import AppFactory
from .conftest import Database
from .models import Counter
from .models import Item


class Boom(Exception):
    pass


def raised(fn: cabc.Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as excinfo:
        fn()
    return excinfo.value


def serialization_failure(url: sa.URL) -> BaseException:
    """Make PostgreSQL refuse a SERIALIZABLE update, through *url*'s driver."""
    engine = sa.create_engine(
        url, isolation_level="SERIALIZABLE", poolclass=sa.NullPool
    )
    try:
        with engine.begin() as setup:
            setup.execute(sa.insert(Counter).values(id=1, value=0))
        with engine.connect() as first, engine.connect() as second:
            first.execute(sa.select(Counter.value)).all()
            second.execute(sa.update(Counter).values(value=1))
            second.commit()
            return raised(lambda: first.execute(sa.update(Counter).values(value=2)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_serialization_failures_are_transient(db_url: str, driver: str) -> None:
    """SQLSTATE 40001 from psycopg 3 and psycopg2 is transient."""
    url = sa.make_url(db_url).set(drivername=f"postgresql+{driver}")
    error = serialization_failure(url)
    assert isinstance(error, sa_exc.OperationalError)
    assert is_transient_error(error)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_database_is_locked_is_transient(
    db_url: str, tmp_path: pathlib.Path
) -> None:
    """SQLite's "database is locked" is transient; a UNIQUE violation is not."""
    with WriteLock(tmp_path / "test.db"):
        engine = sa.create_engine(db_url, connect_args={"timeout": 0})
        with engine.connect() as conn:
            locked = raised(lambda: conn.execute(sa.insert(Item).values(name="a")))
        engine.dispose()
    assert "database is locked" in str(locked)
    assert is_transient_error(locked)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.insert(Item).values(name="a"))
        duplicate = raised(lambda: conn.execute(sa.insert(Item).values(name="a")))
    assert isinstance(duplicate, sa_exc.IntegrityError)
    assert not is_transient_error(duplicate)


@pytest.mark.parametrize(
    ("code", "transient"), [(1213, True), (1205, True), (1064, False)]
)
def test_mysql_deadlocks_and_lock_timeouts_are_transient(
    code: int, transient: bool
) -> None:
    """MySQL errors 1213 and 1205 are transient, other codes are not."""
    orig = pymysql.err.OperationalError(code, "from the server")
    error = sa_exc.OperationalError("UPDATE t SET x = 1", {}, orig)
    assert is_transient_error(error) is transient


def test_other_errors_are_not_transient() -> None:
    """Errors that are not from the database are never retried by default."""
    assert not is_transient_error(ValueError("bad input"))
    assert not is_transient_error(Boom())


def test_sqlite_lock_is_recognised_by_message_without_an_error_code() -> None:
    """Before Python 3.11 sqlite3 errors carry no code; the message decides."""
    for message, transient in [
        ("database is locked", True),
        ("database table is locked", True),
        ("no such table: items", False),
    ]:
        orig = sqlite3.OperationalError(message)
        error = sa_exc.OperationalError("SELECT 1", {}, orig)
        assert is_transient_error(error) is transient


def test_invalidated_connection_is_transient() -> None:
    """An error SQLAlchemy marked as a lost connection is transient."""
    orig = sqlite3.OperationalError("disk I/O error")
    error = sa_exc.OperationalError("SELECT 1", {}, orig, connection_invalidated=True)
    assert is_transient_error(error)


def test_retry_classifier_must_be_callable(uow: UnitOfWork) -> None:
    """Registering something that is not a function is a TypeError."""
    with pytest.raises(TypeError, match="'retry_classifier' needs a function"):
        uow.retry_classifier(40001)  # type: ignore[arg-type]


def test_async_function_is_retried(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An async transactional view is awaited again after a transient error."""
    attempts: list[int] = []
    uow.retry_classifier(lambda exc: isinstance(exc, Boom))

    @flask_app.post("/")
    @uow.transactional(retries=2)
    async def view() -> str:
        attempts.append(1)
        uow.session.add(Item(name=f"attempt{len(attempts)}"))
        if len(attempts) < 3:
            raise Boom()
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert db.names() == ["attempt3"]


class WriteLock:
    """Holds SQLite's write lock from another connection until released."""

    def __init__(self, path: pathlib.Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> WriteLock:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def __exit__(self, *exc_info: object) -> None:
        self.release()
        self.conn.close()


def locking_app(make_app: AppFactory, db_url: str) -> Flask:
    """An app whose SQLite writes fail at once when the database is locked."""
    engine = {"url": db_url, "connect_args": {"timeout": 0}}
    return make_app(UOW_ENGINES={"default": engine})


@pytest.mark.parametrize("backend", ["sqlite"])
def test_transient_error_is_retried_after_prior_work(
    make_app: AppFactory,
    uow: UnitOfWork,
    db: Database,
    db_url: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A view whose before_request hook already read runs again after a
    transient error and succeeds.
    """
    app = locking_app(make_app, db_url)
    attempts: list[int] = []
    with app.app_context():  # The first connection switches the file to WAL.
        uow.session.execute(sa.select(1))

    @app.before_request
    def load_user() -> None:
        uow.session.execute(sa.select(Item)).all()

    # A GET request's unit begins deferred: its hook reads despite the lock.
    @app.get("/")
    @uow.transactional(retries=2)
    def view() -> str:
        attempts.append(len(attempts) + 1)
        uow.session.add(Item(name=f"attempt{len(attempts)}"))
        return "ok"

    with WriteLock(tmp_path / "test.db") as lock:

        @uow.retry_classifier
        def release_then_retry(exc: BaseException) -> bool:
            lock.release()  # The other writer finishes; a retry can succeed.
            return is_transient_error(exc)

        with caplog.at_level(logging.INFO):
            assert app.test_client().get("/").status_code == 200
    assert attempts == [1, 2]
    assert db.names() == ["attempt2"]
    assert "retrying a transaction (retry 1) after OperationalError" in caplog.text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_retries_exhausted_reraises_the_last_error(
    make_app: AppFactory,
    uow: UnitOfWork,
    db: Database,
    db_url: str,
    tmp_path: pathlib.Path,
) -> None:
    """After retries more runs the last transient error propagates."""
    app = locking_app(make_app, db_url)
    attempts: list[int] = []

    @app.errorhandler(sa_exc.OperationalError)
    def busy(e: sa_exc.OperationalError) -> tuple[str, int]:
        return "busy", 503

    @app.post("/")
    @uow.transactional(retries=2)
    def view() -> str:
        attempts.append(1)
        uow.session.add(Item(name="never"))
        return "ok"

    with WriteLock(tmp_path / "test.db"):
        response = app.test_client().post("/")
    assert (response.status_code, response.data) == (503, b"busy")
    assert len(attempts) == 3
    assert db.names() == []


def test_classifier_is_replaceable_and_nested_never_retries(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A custom classifier decides what is retried; only the outermost
    transaction is run again.
    """
    runs = {"outer": 0, "inner": 0}

    @uow.retry_classifier
    def boom_is_transient(exc: BaseException) -> bool:
        return isinstance(exc, Boom)

    @uow.transactional(retries=5)
    def inner() -> None:
        runs["inner"] += 1
        if runs["inner"] < 3:
            raise Boom()

    @uow.transactional(retries=5)
    def outer() -> None:
        runs["outer"] += 1
        uow.session.add(Item(name=f"outer{runs['outer']}"))
        inner()

    with flask_app.app_context():
        outer()
    assert runs == {"outer": 3, "inner": 3}
    assert db.names() == ["outer3"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_concurrent_serializable_increments_are_exact(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Eight threads each increment one counter 50 times through a
    SERIALIZABLE view with retries: the result is exactly 400, and some
    requests had to be retried.
    """
    app = make_app(UOW_RETRY_DELAY=0.001, UOW_RETRY_MAX_DELAY=0.05)
    runs: list[int] = []
    with app.app_context(), uow.transaction() as session:
        session.add(Counter(id=1, value=0))

    @app.post("/increment")
    @uow.transactional(retries=100, isolation_level="SERIALIZABLE")
    def increment() -> str:
        runs.append(1)
        counter = uow.session.get_one(Counter, 1)
        counter.value += 1
        return "ok"

    statuses: list[int] = []

    def worker() -> None:
        client = app.test_client()
        statuses.extend(client.post("/increment").status_code for _ in range(50))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 400
    assert db.scalar("SELECT value FROM counters WHERE id = 1") == 400
    assert len(runs) > 400


def terminate(db: Database, pid: int) -> None:
    """Kill the server process of a connection, as a crash or failover would."""
    assert db.scalar("SELECT pg_terminate_backend(:pid, 5000)", pid=pid) is True


def backend_pid(session: orm.Session) -> int:
    return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("backend", ["postgresql"])
def test_disconnect_before_commit_is_retried(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A connection lost while the function runs is retried on a new one."""
    attempts: list[int] = []

    @flask_app.post("/")
    @uow.transactional(retries=1)
    def view() -> str:
        attempts.append(1)
        uow.session.add(Item(name=f"attempt{len(attempts)}"))
        if len(attempts) == 1:
            terminate(db, backend_pid(uow.session()))
        uow.session.execute(sa.select(1))  # Fails on the first run: no server.
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert len(attempts) == 2
    assert db.names() == ["attempt2"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_disconnect_during_commit_is_never_retried(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """When the connection dies during COMMIT the outcome is unknown, so the
    function is not run again even though the error is a disconnect.
    """
    attempts: list[int] = []
    errors: list[BaseException] = []

    @flask_app.errorhandler(sa_exc.DBAPIError)
    def failed(e: sa_exc.DBAPIError) -> tuple[str, int]:
        errors.append(e)
        return "unknown", 503

    @flask_app.post("/")
    @uow.transactional(retries=3)
    def view() -> str:
        attempts.append(1)
        uow.session.add(Item(name="maybe"))
        pid = backend_pid(uow.session())
        sa.event.listen(
            uow.session, "before_commit", lambda s: terminate(db, pid), once=True
        )
        return "ok"

    response = flask_app.test_client().post("/")
    assert (response.status_code, response.data) == (503, b"unknown")
    assert len(attempts) == 1
    [error] = errors
    assert is_transient_error(error)  # A disconnect, but during COMMIT.
    assert db.names() == []


def test_error_raised_while_committing_is_retried_if_transient(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An error during the commit that is not a lost connection is retried
    when the classifier calls it transient.
    """
    uow.retry_classifier(lambda exc: isinstance(exc, Boom))
    attempts: list[int] = []

    def refuse(session: orm.Session) -> None:
        raise Boom()

    @uow.transactional(retries=1)
    def work() -> None:
        attempts.append(1)
        uow.session.add(Item(name=f"attempt{len(attempts)}"))
        if len(attempts) == 1:
            sa.event.listen(uow.session, "before_commit", refuse, once=True)

    with flask_app.app_context():
        work()
    assert db.names() == ["attempt2"]


def test_backoff_is_random_exponential_and_capped() -> None:
    """The wait before retry n is up to delay * 2 ** (n - 1), at most the cap."""
    for attempt, bound in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 1.0), (5000, 1.0)]:
        waits = [backoff(attempt, 0.1, 1.0) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound / 2  # Spread over the range, not fixed.


def test_retried_function_runs_its_callbacks_once(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Callbacks registered by failed attempts are dropped, even when the
    attempt failed before running any statement.
    """
    uow.retry_classifier(lambda exc: isinstance(exc, Boom))
    calls: list[int] = []

    @uow.transactional(retries=2)
    def work() -> None:
        calls.append(0)
        uow.on_commit(lambda: calls.append(len(calls)))
        if len(calls) < 3:
            raise Boom()
        uow.session.add(Item(name="done"))

    with flask_app.app_context():
        work()
    assert calls == [0, 0, 0, 3]
    assert db.names() == ["done"]
