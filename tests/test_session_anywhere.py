"""Issue 20, sections 2 and 3: ``uow.session`` taken at import time, and a
test body that reads through it between test-client requests, on a SQLite
file, in-memory SQLite and PostgreSQL, with and without isolation.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import Isolation
from flask_uow import UnitOfWork

from .conftest import Database
from .models import Base
from .models import Item

Built = tuple[Flask, UnitOfWork, t.Any]


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if request.param == "sqlite-memory":
        return "sqlite://"
    return t.cast(str, request.getfixturevalue("postgresql_database"))


@pytest.fixture(params=["sqlite-file", "postgresql"])
def durable_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A database that other connections can see: no in-memory SQLite."""
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return t.cast(str, request.getfixturevalue("postgresql_database"))


@pytest.fixture
def build(tmp_path: pathlib.Path) -> cabc.Iterator[cabc.Callable[..., Built]]:
    """Build an app whose views use a session taken before the app existed;
    its tables are dropped and its engines disposed after the test.
    """
    built: list[tuple[Flask, UnitOfWork]] = []

    def make(url: str, **config: t.Any) -> Built:
        uow = UnitOfWork(metadata=Base)
        session = uow.session  # At import time: before any app or context.
        app = Flask("anywhere", instance_path=str(tmp_path / "instance"))
        app.config["UOW_ENGINES"] = {"default": url}
        app.config.update(config)
        uow.init_app(app)
        built.append((app, uow))

        @app.post("/items/<name>")
        def add(name: str) -> str:
            session.add(Item(name=name))
            return "added"

        @app.post("/rename/<int:id>/<name>")
        def rename(id: int, name: str) -> str:
            session.get_one(Item, id).name = name
            return "renamed"

        @app.get("/nodb")
        def nodb() -> str:
            return "no database"

        @app.get("/count")
        def count() -> str:
            return str(session.scalar(sa.select(sa.func.count()).select_from(Item)))

        with app.app_context():
            uow.drop_all()
            uow.create_all()
        return app, uow, session

    yield make
    for app, uow in built:
        with app.app_context():
            uow.drop_all()
        uow.dispose_engines(app)


def separate(url: str) -> Database | None:
    """A separate connection's view; none for an in-memory database."""
    return None if url == "sqlite://" else Database(url)


def count_items(session: t.Any) -> int:
    return t.cast(int, session.scalar(sa.select(sa.func.count()).select_from(Item)))


def test_session_taken_at_import_raises_outside_context(
    build: cabc.Callable[..., Built], tmp_path: pathlib.Path
) -> None:
    """Used with no context, the import-time session raises the clear error."""
    app, uow, session = build(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(RuntimeError, match="outside of application context"):
        session.execute(sa.select(1))


def test_event_listener_on_import_time_session(
    build: cabc.Callable[..., Built], tmp_path: pathlib.Path
) -> None:
    """sa.event.listen on the import-time session sees each request's commit."""
    uow = UnitOfWork(metadata=Base)
    seen: list[int] = []
    sa.event.listen(uow.session, "before_commit", lambda s: seen.append(1))
    app = Flask("events", instance_path=str(tmp_path / "instance"))
    app.config["UOW_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'e.db'}"}
    uow.init_app(app)

    @app.post("/")
    def add() -> str:
        uow.session.add(Item(name="x"))
        return "ok"

    try:
        with app.app_context():
            uow.create_all()
        app.test_client().post("/")
    finally:
        uow.dispose_engines(app)
    assert seen == [1]  # The request's one commit.


@pytest.mark.parametrize("isolated", [False, True], ids=["committing", "isolated"])
def test_body_reads_what_requests_committed(
    url: str, build: cabc.Callable[..., Built], isolated: bool
) -> None:
    """cookiecutter-flask's test_can_register: count, post, count again."""
    app, uow, session = build(url)
    isolation = Isolation(app) if isolated else None
    if isolation is not None:
        isolation.start()
    try:
        with app.app_context():
            before = count_items(session)
            client = app.test_client()
            assert client.post("/items/a").status_code == 200
            assert client.post("/items/b").status_code == 200
            after = count_items(session)
            assert after - before == 2
    finally:
        if isolation is not None:
            isolation.stop()
    db = separate(url)
    if db is not None:
        assert db.names() == ([] if isolated else ["a", "b"])
        db.engine.dispose()


@pytest.mark.parametrize("isolated", [False, True], ids=["committing", "isolated"])
def test_body_objects_show_what_requests_changed(
    url: str, build: cabc.Callable[..., Built], isolated: bool
) -> None:
    """An object the body loaded shows a request's change to its row, as
    with Flask-SQLAlchemy's one session per app context; a pytest-flask style
    test request context around the body works the same.
    """
    app, uow, session = build(url)
    with app.app_context():
        session.add(Item(name="old"))
        session.commit()
    isolation = Isolation(app) if isolated else None
    if isolation is not None:
        isolation.start()
    try:
        with app.test_request_context():
            item = session.scalars(sa.select(Item)).one()
            assert item.name == "old"
            client = app.test_client()
            assert client.post(f"/rename/{item.id}/new").status_code == 200
            assert item.name == "new"
            assert client.get("/count").data == b"1"
            assert client.post(f"/rename/{item.id}/newer").status_code == 200
            assert session.scalars(sa.select(Item.name)).all() == ["newer"]
    finally:
        if isolation is not None:
            isolation.stop()
    db = separate(url)
    if db is not None:
        assert db.names() == (["old"] if isolated else ["newer"])
        db.engine.dispose()


def test_write_requests_begin_immediate_on_in_memory_sqlite(
    build: cabc.Callable[..., Built],
) -> None:
    """On the one shared in-memory connection, a write request still begins
    with BEGIN IMMEDIATE after the body read, and a read request with BEGIN.
    """
    app, uow, session = build("sqlite://")
    statements: list[str] = []
    with app.app_context():
        with uow.engine.connect() as connection:  # StaticPool: the only one.
            dbapi_connection = connection.connection.dbapi_connection
    dbapi_connection.set_trace_callback(statements.append)  # type: ignore[union-attr]
    try:
        with app.app_context():
            assert count_items(session) == 0
            client = app.test_client()
            assert client.post("/items/a").status_code == 200
            assert client.get("/count").data == b"1"
            assert count_items(session) == 1
    finally:
        dbapi_connection.set_trace_callback(None)  # type: ignore[union-attr]
    begins = [s for s in statements if s.startswith(("BEGIN", "ROLLBACK", "COMMIT"))]
    assert begins == [
        "BEGIN",  # The body's read...
        "ROLLBACK",  # ...ended when the request makes its session.
        "BEGIN",  # The request's transaction, which writes:
        "ROLLBACK",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "BEGIN",  # The read request.
        "COMMIT",
        "BEGIN",  # The body's second read.
        "ROLLBACK",  # The body's unit ends with its context.
    ]


def test_body_changes_on_in_memory_sqlite_are_explained(
    build: cabc.Callable[..., Built],
) -> None:
    """On in-memory SQLite, a request made while the body holds uncommitted
    changes fails with an error saying to commit them first; after the commit
    the request works.
    """
    app, uow, session = build("sqlite://", TESTING=True)
    with app.app_context():
        session.add(Item(name="body"))
        session.flush()
        client = app.test_client()
        with pytest.raises(RuntimeError, match=r"Commit them \('uow.session.commit"):
            client.post("/items/request")
        session.commit()
        assert client.post("/items/request").status_code == 200
        assert sorted(session.scalars(sa.select(Item.name))) == ["body", "request"]


@pytest.mark.parametrize(
    "change",
    ["pending", "flushed", "core-insert", "text-insert", "savepoint", "on_commit"],
)
def test_body_changes_are_left_to_the_body(
    durable_url: str, build: cabc.Callable[..., Built], change: str
) -> None:
    """A body transaction that holds changes (or may) is not ended by a read
    request; the body commits them itself.
    """
    url = durable_url
    app, uow, session = build(url)
    ran: list[str] = []
    with app.app_context():
        session.scalars(sa.select(Item)).all()
        if change == "pending":
            session.add(Item(name="body"))
        elif change == "flushed":
            session.add(Item(name="body"))
            session.flush()
        elif change == "core-insert":
            session.execute(sa.insert(Item).values(name="body"))
        elif change == "text-insert":
            session.execute(sa.text("INSERT INTO items (name) VALUES ('body')"))
        elif change == "savepoint":
            session.begin_nested()
            session.add(Item(name="body"))
        else:
            uow.on_commit(lambda: ran.append("callback"))
            session.add(Item(name="body"))
        assert app.test_client().get("/nodb").status_code == 200
        assert app.test_client().get("/count").data == b"0"
        assert session.in_transaction()
        if change == "savepoint":
            session.commit()  # Releases the savepoint.
        session.commit()
    db = separate(url)
    assert db is not None
    assert db.names() == ["body"]
    db.engine.dispose()
    assert ran == (["callback"] if change == "on_commit" else [])


def test_text_reads_and_requests_without_the_database(
    url: str, build: cabc.Callable[..., Built]
) -> None:
    """A text SELECT counts as a read (the request ends the transaction); a
    request that never uses the database leaves the body's transaction open.
    """
    app, uow, session = build(url)
    with app.app_context():
        assert session.execute(sa.text("SELECT COUNT(*) FROM items")).scalar() == 0
        assert app.test_client().get("/nodb").status_code == 200
        assert session.in_transaction()
        assert app.test_client().post("/items/a").status_code == 200
        assert not session.in_transaction()
        assert session.execute(sa.text("SELECT COUNT(*) FROM items")).scalar() == 1
