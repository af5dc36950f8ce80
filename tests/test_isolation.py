"""Test isolation for users' test suites: everything rolled back, commits
included, with what the app committed still observable.
"""

from __future__ import annotations

import os
import pathlib
import socket
import textwrap
import unittest

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import Isolation
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item


def add_views(app: Flask, uow: UnitOfWork) -> None:
    @app.post("/items/<name>")
    def add(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return name, 201

    @app.post("/transactional/<name>")
    @uow.transactional(isolation_level="SERIALIZABLE")
    def add_transactional(name: str) -> str:
        uow.session.add(Item(name=name))
        with uow.transaction():
            uow.session.add(Item(name=f"{name}-nested"))
        try:
            with uow.transaction():
                uow.session.add(Item(name=f"{name}-undone"))
                raise KeyError(name)
        except KeyError:
            pass
        return name

    @app.get("/items")
    def items() -> list[str]:
        return list(uow.session.scalars(sa.select(Item.name).order_by(Item.name)))

    @app.cli.command("seed")
    def seed() -> None:
        with uow.transaction() as session:
            session.add(Item(name="seeded"))


def test_everything_the_app_commits_is_rolled_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Commits at request end, transactional views with savepoints, CLI
    transactions and rollbacks are all visible during the isolation and gone
    after it.
    """
    add_views(flask_app, uow)
    client = flask_app.test_client()
    with Isolation(flask_app):
        assert client.post("/items/a").status_code == 201
        assert client.post("/transactional/b").status_code == 200
        assert flask_app.test_cli_runner().invoke(args=["seed"]).exit_code == 0
        with flask_app.app_context():
            uow.session.add(Item(name="rolled back"))
            uow.session.flush()
            uow.session.rollback()
        assert client.get("/items").json == ["a", "b", "b-nested", "seeded"]
        assert db.names() == []  # Nothing is committed for other connections.
    assert db.names() == []
    assert client.get("/items").json == []


def test_what_the_app_committed_is_observable(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """after_commit and on_commit callbacks fire in isolation and are recorded."""
    sent: list[str] = []

    @flask_app.post("/signup/<name>")
    def signup(name: str) -> str:
        uow.session.add(Item(name=name))
        uow.on_commit(lambda: sent.append(f"welcome {name}"))
        return name

    @flask_app.post("/fail/<name>")
    def fail(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        uow.on_commit(lambda: sent.append("never"))
        return "no", 400

    client = flask_app.test_client()
    with Isolation(flask_app) as isolation:
        client.post("/signup/ann")
        client.post("/fail/bob")
    assert sent == ["welcome ann"]
    assert len(isolation.callbacks) == 1
    assert [(c.operation, c.table) for c in isolation.changes] == [("insert", "items")]
    assert len(isolation.commits) == 1


def test_several_engines_are_isolated(
    make_app: AppFactory, uow: UnitOfWork, db: Database, tmp_path: pathlib.Path
) -> None:
    """Each engine of UOW_ENGINES has its own outer transaction."""
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    log = sa.Table(
        "log",
        sa.MetaData(),
        sa.Column("name", sa.String, primary_key=True),
        info={"bind_key": "other"},
    )
    log.create(other.engine)
    app = make_app(UOW_ENGINES={"default": db.url, "other": other.url})

    @app.post("/<name>")
    def write(name: str) -> str:
        uow.session.add(Item(name=name))
        uow.session.execute(sa.insert(log).values(name=name))
        return str(uow.session.scalar(sa.select(sa.func.count()).select_from(log)))

    client = app.test_client()
    with Isolation(app):
        assert client.post("/a").data == b"1"
        assert client.post("/b").data == b"2"
    assert db.names() == []
    assert other.names("log") == []
    other.engine.dispose()


def test_failure_mid_request_leaves_the_database_clean(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An exception escaping a request ends the isolation cleanly: nothing
    written, no connection checked out (checked by the fixture).
    """
    flask_app.config["PROPAGATE_EXCEPTIONS"] = True

    @flask_app.post("/crash")
    def crash() -> str:
        uow.session.add(Item(name="half"))
        uow.session.flush()
        raise KeyError("crash")

    add_views(flask_app, uow)
    client = flask_app.test_client()
    with pytest.raises(KeyError), Isolation(flask_app):
        client.post("/items/committed")
        client.post("/crash")
    assert db.names() == []


def test_unittest_test_case(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """Isolation works from unittest through start() and stop()."""
    add_views(flask_app, uow)

    class ItemsTest(unittest.TestCase):
        def setUp(self) -> None:
            self.isolation = Isolation(flask_app)
            self.isolation.start()
            self.addCleanup(self.isolation.stop)
            self.client = flask_app.test_client()

        def test_a_adds(self) -> None:
            self.client.post("/items/x")
            self.assertEqual(self.client.get("/items").json, ["x"])

        def test_b_starts_empty(self) -> None:
            self.assertEqual(self.client.get("/items").json, [])

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(ItemsTest)
    result = unittest.TestResult()
    suite.run(result)
    assert (result.testsRun, result.errors, result.failures) == (2, [], [])
    assert db.names() == []


def test_misuse_is_refused(make_app: AppFactory, uow: UnitOfWork) -> None:
    """Nested isolations, open sessions and apps without flask_uow are errors;
    stop() may be called twice.
    """
    app = make_app()
    with Isolation(app) as isolation:
        with pytest.raises(RuntimeError, match="already isolated"):
            Isolation(app).start()
    isolation.stop()
    with app.app_context():
        uow.session.execute(sa.select(1))
        with pytest.raises(RuntimeError, match="Start the isolation before"):
            Isolation(app).start()
    with pytest.raises(RuntimeError, match="not set up with flask_uow"):
        Isolation(make_app(init=False))


USER_CONFTEST = """
import os
import socket

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import UnitOfWork


class Base(orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50), unique=True)


uow = UnitOfWork()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory, worker_id):
    url = os.environ["ITEMS_DATABASE_URL"]
    if url.startswith("sqlite"):
        # SQLite allows one writer at a time: one database per xdist worker.
        url = f"sqlite:///{tmp_path_factory.getbasetemp() / worker_id}.db"
        engine = sa.create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
    return url


@pytest.fixture
def app(database_url):
    app = Flask("items")
    app.config["UOW_ENGINES"] = {"default": database_url}
    uow.init_app(app)

    @app.post("/items/<name>")
    def add(name):
        uow.session.add(Item(name=name))
        return name

    @app.get("/items")
    def items():
        return list(uow.session.scalars(sa.select(Item.name).order_by(Item.name)))

    yield app
    uow.dispose_engines(app)


@pytest.fixture(autouse=True)
def _isolated(uow_isolation):
    pass
"""

USER_TESTS = """
import pytest


@pytest.mark.parametrize("n", range(6))
def test_writes_the_same_row(client, n):
    assert client.post("/items/same").status_code == 200
    assert client.get("/items").json == ["same"]


def test_fails_mid_request(client):
    client.post("/items/half")
    assert client.get("/items").json == []  # fails: the row is there


def test_errors_mid_request(app, client):
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.post("/crash")
    def crash():
        raise RuntimeError("crash")

    client.post("/items/half")
    client.post("/crash")
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_pytest_plugin_with_pytest_flask_and_xdist(
    pytester: pytest.Pytester, db: Database, workers: str
) -> None:
    """A user's suite gets the uow_isolation fixture from the installed
    plugin, with pytest-flask's client; every test starts from an empty table,
    including across pytest-xdist workers and after failures.
    """
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_items=USER_TESTS)
    env = {"ITEMS_DATABASE_URL": db.url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", workers)
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    result.assert_outcomes(passed=6, failed=2)
    assert db.names() == []


def test_plugin_is_registered_as_an_entry_point() -> None:
    """Installing the package registers the plugin with pytest."""
    from importlib.metadata import entry_points

    [entry] = [e for e in entry_points(group="pytest11") if e.name == "flask_uow"]
    assert entry.value == "flask_uow.pytest_plugin"


def test_isolation_fixture_rejects_a_non_app(pytester: pytest.Pytester) -> None:
    """The fixture says what it needs when 'app' is not a Flask app."""
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def app():
                return "not an app"

            def test_it(uow_isolation):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs an 'app' fixture that returns the Flask app*"])


class TestFixtureInProcess:
    """The uow_isolation fixture, with pytest-flask's pushed request context."""

    @pytest.fixture
    def app(self, flask_app: Flask, uow: UnitOfWork) -> Flask:
        add_views(flask_app, uow)
        return flask_app

    def test_session_of_the_test_body_is_isolated(
        self, app: Flask, uow: UnitOfWork, uow_isolation: Isolation, db: Database
    ) -> None:
        """The test body's own session (in pytest-flask's request context)
        and the client's requests share the isolation; stopping it closes the
        body's session.
        """
        uow.session.add(Item(name="from the test"))
        uow.session.commit()
        assert app.test_client().get("/items").json == ["from the test"]
        uow_isolation.stop()
        assert db.names() == []


def test_failed_start_leaves_nothing_open(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """If one engine cannot connect, start() raises and closes the others."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = f"postgresql+psycopg://user@127.0.0.1:{port}/db"
    app = make_app(UOW_ENGINES={"default": db.url, "other": unreachable})
    isolation = Isolation(app)
    with pytest.raises(sa.exc.OperationalError):
        isolation.start()
    assert isolation.connections == {}
    with app.app_context():
        assert uow.session.scalar(sa.select(sa.func.count(Item.id))) == 0
