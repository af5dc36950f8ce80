"""Fixtures shared by the test suite: databases, apps, and leak checks."""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import shutil
import tempfile
import typing as t
import uuid
import warnings

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import has_app_context
from flask import has_request_context

from flask_uow import UnitOfWork

from .models import metadata
from .pgcluster import Cluster

BACKENDS = ["sqlite", "postgresql"]


with warnings.catch_warnings():
    # platformdirs, imported by pgserver, warns when XDG_RUNTIME_DIR is unset,
    # as it is in CI. Imported now, not when the server starts: pytester
    # restores sys.modules after each test, which would drop the modules
    # pgserver still needs to stop the server.
    warnings.simplefilter("ignore")
    import pgserver

# The database drivers and their dialects are imported now for the same
# reason. A driver first imported during a pytester test is dropped from
# sys.modules after it, but its compiled part cannot be imported twice and
# keeps raising the first import's exception classes; SQLAlchemy, checking
# against the second import's classes, would then let driver errors through
# unwrapped (psycopg.OperationalError instead of sqlalchemy.exc.OperationalError)
# in whichever test happens to run next.
import psycopg  # noqa: E402, F401
import psycopg2  # noqa: E402, F401
import sqlalchemy.dialects.postgresql.psycopg  # noqa: E402, F401
import sqlalchemy.dialects.postgresql.psycopg2  # noqa: E402, F401


def _start_pgserver(folder: pathlib.Path) -> tuple[str, t.Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    uri = server.get_uri()
    return uri.replace("postgresql://", "postgresql+psycopg://", 1), server


@pytest.fixture(scope="session")
def postgresql_server() -> cabc.Iterator[sa.URL]:
    """A PostgreSQL server for the whole run: ``UOW_TEST_DATABASE_URL`` if set,
    else one started from the ``pgserver`` package. If neither works the tests
    that need it fail; they never skip.

    Its data lives in a temporary folder of its own: pytest's base folder is
    shared by every pytest run of this user, and a run that starts later
    deletes old ones, which would pull the data from under a running server.
    """
    url = os.environ.get("UOW_TEST_DATABASE_URL")
    server = None
    folder = pathlib.Path(tempfile.mkdtemp(prefix="flask_uow_pg_"))
    if not url:
        try:
            url, server = _start_pgserver(folder / "pgdata")
        except Exception as e:  # pragma: no cover - only when the server breaks
            pytest.fail(
                f"Could not start a PostgreSQL server with 'pgserver' ({e!r})."
                " Install the test extra, or set UOW_TEST_DATABASE_URL to a"
                " server where this user may create databases."
            )
    try:
        yield sa.make_url(url)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_database(
    postgresql_server: sa.URL, worker_id: str
) -> cabc.Iterator[str]:
    """A database of this test process's own (one per pytest-xdist worker)."""
    name = f"flask_uow_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        postgresql_server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgresql_server.set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of a test parametrized over both."""
    return t.cast(str, request.param)


@pytest.fixture
def db_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> cabc.Iterator[str]:
    """The URL of an empty database with the test tables, on ``backend``."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        url = request.getfixturevalue("postgresql_database")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()
    yield url


class Database:
    """Reads the test database through its own connection, as another client
    of the database would see it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)

    def scalar(self, sql: str, **params: t.Any) -> t.Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def names(self, table: str = "items") -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT name FROM {table} ORDER BY name"))
            return [row[0] for row in rows]


@pytest.fixture
def db(db_url: str) -> cabc.Iterator[Database]:
    """A separate connection's view of the test database."""
    database = Database(db_url)
    yield database
    database.engine.dispose()


AppFactory = cabc.Callable[..., Flask]


class PoolWatch:
    """Counts connections checked out of and back into an app's pools, for
    every kind of pool (StaticPool has no ``checkedout()``).
    """

    def __init__(self, engines: cabc.Iterable[sa.Engine]) -> None:
        self.out: dict[str, int] = {}
        for engine in engines:
            self._watch(engine)

    def _watch(self, engine: sa.Engine) -> None:
        name = engine.url.render_as_string()
        self.out[name] = 0

        @sa.event.listens_for(engine, "checkout")
        def checkout(*args: t.Any) -> None:
            self.out[name] += 1

        @sa.event.listens_for(engine, "checkin")
        def checkin(*args: t.Any) -> None:
            self.out[name] -= 1

    def leaked(self) -> dict[str, int]:
        return {name: n for name, n in self.out.items() if n}


def check_no_leaks(uow: UnitOfWork, app: Flask, watch: PoolWatch) -> None:
    """No connection checked out of any pool, no context left pushed."""
    assert not has_request_context(), "a request context was left pushed"
    assert not has_app_context(), "an application context was left pushed"
    assert watch.leaked() == {}, "connections left checked out"


def watch_pools(uow: UnitOfWork, app: Flask) -> PoolWatch:
    with app.app_context():
        return PoolWatch(uow.engines.values())


@pytest.fixture
def uow() -> UnitOfWork:
    """A fresh extension instance."""
    return UnitOfWork()


@pytest.fixture
def make_app(
    uow: UnitOfWork, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[AppFactory]:
    """Build apps set up with ``uow`` on the test database; after the test,
    check that each leaked nothing, then dispose its engines.
    """
    apps: list[tuple[Flask, PoolWatch]] = []

    def make(*, init: bool = True, **config: t.Any) -> Flask:
        app = Flask(
            f"app{len(apps)}",
            root_path=str(tmp_path),
            instance_path=str(tmp_path / "instance"),
        )
        app.config["UOW_ENGINES"] = {"default": db_url}
        app.config["UOW_RETRY_DELAY"] = 0  # Retries without waiting.
        app.config.update(config)
        if init:
            uow.init_app(app)
            apps.append((app, watch_pools(uow, app)))
        return app

    yield make
    for app, watch in apps:
        try:
            check_no_leaks(uow, app, watch)
        finally:
            uow.dispose_engines(app)


@pytest.fixture
def flask_app(make_app: AppFactory) -> Flask:
    """An app set up with ``uow`` on the test database."""
    return make_app()


@pytest.fixture(scope="session")
def pg_cluster() -> cabc.Iterator[Cluster]:
    """A PostgreSQL primary and a streaming replica for the whole run, started
    when a test first needs them. If they cannot start, those tests fail.
    """
    try:
        cluster = Cluster.start()
    except Exception as e:  # pragma: no cover - only when the servers break
        pytest.fail(f"Could not start a PostgreSQL primary and replica: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
