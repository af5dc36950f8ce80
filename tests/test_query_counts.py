"""Query-count assertions: the context managers and the pytest fixtures."""

from __future__ import annotations

import os
import pathlib
import re
import textwrap
import threading

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import Isolation
from flask_uow import UnitOfWork
from flask_uow.pytest_plugin import QueryAssertion

from .conftest import AppFactory
from .conftest import Database
from .models import Item

HERE = pathlib.Path(__file__).name


def items_app(make_app: AppFactory, uow: UnitOfWork) -> Flask:
    app = make_app()

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        return name

    @app.get("/items")
    def items() -> list[str]:
        return list(uow.session.scalars(sa.select(Item.name).order_by(Item.name)))

    return app


def test_counts_every_request_in_the_block(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Statements of several requests, and of an application context, are
    counted together, without an app context around the block; BEGIN and
    COMMIT are not counted; the listeners go when the block ends.
    """
    app = items_app(make_app, uow)
    client = app.test_client()
    with uow.assert_num_queries(3) as records:
        client.post("/items/a")
        client.get("/items")
        with app.app_context():
            uow.session.get(Item, 1)
    assert [r.statement.split()[0] for r in records] == ["INSERT", "SELECT", "SELECT"]
    assert db.names() == ["a"]
    with uow.assert_max_queries(2):
        client.get("/items")
    with app.app_context():
        engine = uow.engine
    assert not engine.dispatch.before_cursor_execute


def test_failure_lists_the_statements(make_app: AppFactory, uow: UnitOfWork) -> None:
    """A failed assertion lists the statements, numbered, with call sites."""
    app = items_app(make_app, uow)
    client = app.test_client()
    with pytest.raises(AssertionError) as caught:
        with uow.assert_max_queries(1):
            client.post("/items/a")
            client.get("/items")
            client.get("/items")
    message = str(caught.value)
    assert message.startswith("3 statements ran, at most 1 expected:\n1. INSERT")
    assert re.search(
        rf"\n2\. SELECT items.name FROM items .*\n   at .*{HERE}:\d+", message
    )
    assert "(items) [default]" in message
    assert "\n3. SELECT" in message
    with pytest.raises(AssertionError, match="1 statement ran, exactly 2 expected"):
        with uow.assert_num_queries(2):
            client.get("/items")


def test_counts_across_apps_and_nested_blocks(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """Every app of the instance is counted, and nested blocks count each."""
    first, second = items_app(make_app, uow), items_app(make_app, uow)
    with uow.assert_num_queries(2):
        first.test_client().get("/items")
        with uow.assert_num_queries(1):
            second.test_client().get("/items")


def test_isolation_and_savepoints_are_not_counted(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Under test isolation, and with nested transactions, only the app's own
    statements are counted, not SAVEPOINT, RELEASE or ROLLBACK TO.
    """
    app = items_app(make_app, uow)
    with Isolation(app):
        client = app.test_client()
        with uow.assert_num_queries(2):
            client.post("/items/a")
            assert client.get("/items").json == ["a"]
        with app.app_context(), uow.assert_num_queries(1):
            with uow.transaction():
                try:
                    with uow.transaction() as session:
                        session.add(Item(name="b"))
                        session.flush()
                        raise LookupError
                except LookupError:
                    pass
    assert db.names() == []


def test_error_in_the_block_is_not_masked(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """An exception raised in the block propagates; the count is not checked."""
    app = items_app(make_app, uow)
    with pytest.raises(LookupError), uow.assert_num_queries(0):
        app.test_client().get("/items")
        raise LookupError


@pytest.mark.parametrize(
    ("n", "error", "text"),
    [
        ("3", TypeError, "as an int, not 'str'"),
        (3.0, TypeError, "as an int, not 'float'"),
        (True, TypeError, "as an int, not 'bool'"),
        (-1, ValueError, "of 0 or more, not -1"),
    ],
)
def test_bad_count_is_refused(
    uow: UnitOfWork, n: object, error: type[Exception], text: str
) -> None:
    """A count that is not an int of 0 or more is refused when the block
    begins, for both assertions.
    """
    for assertion in (uow.assert_max_queries, uow.assert_num_queries):
        with pytest.raises(error, match=re.escape(text)):
            with assertion(n):  # type: ignore[arg-type]
                pass


USER_CONFTEST = """
import os

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from flask_uow import UnitOfWork
from flask_uow.pytest_plugin import QueryAssertion


class Base(orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50), unique=True)


uow = UnitOfWork()


@pytest.fixture
def app():
    app = Flask("items")
    app.config["UOW_ENGINES"] = {"default": os.environ["ITEMS_DATABASE_URL"]}
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
def test_exact(client, uow_assert_num_queries):
    with uow_assert_num_queries(2):
        client.post("/items/a")
        assert client.get("/items").json == ["a"]


def test_at_most(client, uow_assert_max_queries):
    with uow_assert_max_queries(5):
        client.get("/items")


def test_too_many(client, uow_assert_max_queries):
    with uow_assert_max_queries(1):
        client.post("/items/b")
        client.get("/items")
"""


def test_fixtures_in_a_user_suite(pytester: pytest.Pytester, db: Database) -> None:
    """A user's suite gets both fixtures from the plugin, with pytest-flask's
    client and uow_isolation; a failure shows the numbered statements.
    """
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_items=USER_TESTS)
    os.environ["ITEMS_DATABASE_URL"] = db.url
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    finally:
        del os.environ["ITEMS_DATABASE_URL"]
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*2 statements ran, at most 1 expected:", "*1. INSERT INTO items*"]
    )
    assert db.names() == []


def test_fixtures_need_an_app_with_the_extension(pytester: pytest.Pytester) -> None:
    """The fixtures say what they need when 'app' is not a Flask app set up
    with flask_uow.
    """
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest
            from flask import Flask

            @pytest.fixture
            def app(request):
                return Flask("bare") if "bare" in request.node.name else "no app"

            def test_not_an_app(uow_assert_num_queries):
                pass

            def test_bare(uow_assert_max_queries):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "'uow_assert_num_queries' fixture needs an 'app' fixture" in output
    assert "'bare' of the 'app' fixture is not set up with flask_uow" in output


def test_statement_run_by_library_code_alone(
    make_app: AppFactory, uow: UnitOfWork
) -> None:
    """A statement whose stack holds no code outside the libraries, here run
    by SQLAlchemy's inspector in a thread, is counted with an unknown call
    site.
    """
    app = make_app()
    with app.app_context():
        inspector = sa.inspect(uow.engine)
    with uow.assert_max_queries(100) as records:
        thread = threading.Thread(target=inspector.get_table_names)
        thread.start()
        thread.join()
    assert records
    assert {record.location for record in records} == {"<unknown>"}


class TestFixturesInProcess:
    """The fixtures, with the test's own app fixture."""

    @pytest.fixture
    def app(self, make_app: AppFactory, uow: UnitOfWork) -> Flask:
        return items_app(make_app, uow)

    def test_fixtures_count(
        self,
        app: Flask,
        uow_assert_num_queries: QueryAssertion,
        uow_assert_max_queries: QueryAssertion,
    ) -> None:
        """Each fixture is the assertion of the app's extension."""
        client = app.test_client()
        with uow_assert_num_queries(1):
            client.post("/items/a")
        with pytest.raises(AssertionError, match="2 statements ran, at most 1"):
            with uow_assert_max_queries(1):
                client.get("/items")
                client.get("/items")


def test_transaction_control_sent_by_hand_is_not_counted(
    make_app: AppFactory, uow: UnitOfWork, backend: str
) -> None:
    """Transaction control is not counted even when the app sends it as SQL:
    SET TRANSACTION on PostgreSQL, SAVEPOINT and RELEASE on SQLite.
    """
    app = make_app()
    control = {
        "postgresql": ["SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        "sqlite": ["SAVEPOINT by_hand", "RELEASE SAVEPOINT by_hand"],
    }[backend]
    with app.app_context():
        engine = uow.engine
    with uow.assert_num_queries(1) as records, engine.begin() as conn:
        conn.exec_driver_sql(control[0])
        assert conn.execute(sa.select(sa.literal(7))).scalar() == 7
        for statement in control[1:]:
            conn.exec_driver_sql(statement)
    assert records[0].statement.startswith("SELECT")
