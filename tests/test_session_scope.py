"""Which session a piece of code gets, when it is created and when it is closed."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import gc
import pathlib
import threading

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import current_app
from flask import Flask
from flask import Response
from flask import stream_with_context

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import check_no_leaks
from .conftest import Database
from .conftest import watch_pools
from .models import Item
from .models import metadata


def live_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, orm.Session) for o in gc.get_objects())


@pytest.mark.parametrize("touch", [False, True])
def test_untouched_request_creates_no_session_and_no_connection(
    flask_app: Flask, uow: UnitOfWork, touch: bool
) -> None:
    """Only a request that uses uow.session creates a session or connects."""
    checkouts: list[object] = []

    @sa.event.listens_for(uow_engine(flask_app, uow), "checkout")
    def on_checkout(dbapi_connection: object, record: object, proxy: object) -> None:
        checkouts.append(dbapi_connection)

    sessions_at_end: list[int] = []

    @flask_app.get("/")
    def index() -> str:
        if touch:
            uow.session.execute(sa.select(1))
        return "hello"

    # Registered after init_app, so it runs before the unit of work finishes.
    @flask_app.after_request
    def count(response: Response) -> Response:
        sessions_at_end.append(live_sessions())
        return response

    before = live_sessions()
    assert flask_app.test_client().get("/").data == b"hello"
    assert sessions_at_end == [before + touch]
    assert len(checkouts) == touch


def uow_engine(app: Flask, uow: UnitOfWork) -> sa.Engine:
    with app.app_context():
        return uow.engine


def test_each_request_gets_its_own_session_inside_one_app_context(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Requests made inside one pushed app context do not share a session."""
    sessions: list[orm.Session] = []
    add_view = flask_app.post("/items/<name>")

    @add_view
    def add_item(name: str) -> str:
        sessions.append(uow.session())
        uow.session.add(Item(name=name))
        return "ok"

    @flask_app.get("/identity-map")
    def identity_map() -> str:
        sessions.append(uow.session())
        return str(len(uow.session.identity_map))

    with flask_app.app_context():
        client = flask_app.test_client()
        client.post("/items/a")
        client.post("/items/b")
        assert client.get("/identity-map").data == b"0"
        sessions.append(uow.session())
        assert uow.session.scalars(sa.select(Item.name)).all() == ["a", "b"]
    assert len({id(s) for s in sessions}) == 4
    assert db.names() == ["a", "b"]


def test_concurrent_requests_on_eight_threads(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Eight requests in flight at once each have their own session."""
    barrier = threading.Barrier(8, timeout=30)
    sessions: list[orm.Session] = []

    @flask_app.post("/items/<name>")
    def add_item(name: str) -> str:
        uow.session.add(Item(name=name))
        sessions.append(uow.session())
        barrier.wait()  # All eight sessions exist at the same time.
        return "ok"

    statuses: list[int] = []

    def worker(n: int) -> None:
        statuses.append(flask_app.test_client().post(f"/items/t{n}").status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert len({id(s) for s in sessions}) == 8
    assert db.names() == [f"t{n}" for n in range(8)]


def test_async_views(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """async def views get their own session and are committed like others."""
    sessions: list[orm.Session] = []

    @flask_app.post("/items/<name>")
    async def add_item(name: str) -> str:
        uow.session.add(Item(name=name))
        await asyncio.sleep(0)
        sessions.append(uow.session())
        return "ok"

    @flask_app.post("/fail")
    @uow.no_autocommit
    async def fail() -> str:
        uow.session.add(Item(name="never"))
        return "ok"

    client = flask_app.test_client()
    assert client.post("/items/a").status_code == 200
    assert client.post("/items/b").status_code == 200
    assert client.post("/fail").status_code == 200
    assert sessions[0] is not sessions[1]
    assert db.names() == ["a", "b"]


def test_stream_with_context_reads_until_the_stream_closes(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A streamed body reads through the view's own session: objects and a
    result the view loaded stay usable; the view's writes are committed
    before the body starts; the session is closed and its connection released
    when the stream closes.
    """
    engine = uow_engine(flask_app, uow)
    held_while_streaming: list[int] = []
    sessions: list[orm.Session] = []

    @flask_app.get("/export")
    def export() -> Response:
        sessions.append(uow.session())
        uow.session.add(Item(name="written-by-view"))
        uow.session.add_all([Item(name=f"n{i}") for i in range(3)])
        uow.session.flush()
        first = uow.session.scalars(sa.select(Item).order_by(Item.name)).first()
        items = uow.session.scalars(sa.select(Item).order_by(Item.name))

        def generate() -> cabc.Iterator[str]:
            sessions.append(uow.session())
            yield f"committed={db.names()}\n"
            yield f"first={first.name if first else None}\n"
            for item in items:
                yield item.name + "\n"
            yield f"count={uow.session.scalar(sa.select(sa.func.count(Item.id)))}\n"
            held_while_streaming.append(engine.pool.checkedout())  # type: ignore[attr-defined]

        return Response(stream_with_context(generate()))

    response = flask_app.test_client().get("/export", buffered=False)
    lines = b"".join(response.response).decode().splitlines()  # type: ignore[arg-type]
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    response.close()
    assert lines == [
        "committed=['n0', 'n1', 'n2', 'written-by-view']",
        "first=n0",
        "n0",
        "n1",
        "n2",
        "written-by-view",
        "count=4",
    ]
    assert sessions[0] is sessions[1]
    assert held_while_streaming == [1]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_unread_stream_is_closed_with_the_response(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """A stream the client never reads still releases the session when the
    server closes the response.
    """
    engine = uow_engine(flask_app, uow)

    @flask_app.get("/export")
    def export() -> Response:
        uow.session.execute(sa.select(1))

        def generate() -> cabc.Iterator[str]:
            yield str(uow.session.scalar(sa.select(sa.literal(2))))  # pragma: no cover

        return Response(stream_with_context(generate()))

    response = flask_app.test_client().get("/export", buffered=False)
    response.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_plain_generator_response_releases_before_streaming(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Without stream_with_context the session is closed when the view returns."""
    engine = uow_engine(flask_app, uow)

    @flask_app.post("/stream")
    def stream() -> Response:
        uow.session.add(Item(name="s"))

        def generate() -> cabc.Iterator[str]:
            yield f"{engine.pool.checkedout()} {db.names()}"  # type: ignore[attr-defined]

        return Response(generate())

    response = flask_app.test_client().post("/stream", buffered=False)
    assert b"".join(response.response) == b"0 ['s']"  # type: ignore[arg-type]
    response.close()


def test_failed_request_releases_the_connection(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """An exception that escapes to the test client still closes the session."""
    flask_app.config["PROPAGATE_EXCEPTIONS"] = True
    engine = uow_engine(flask_app, uow)

    @flask_app.get("/crash")
    def crash() -> str:
        uow.session.execute(sa.select(1))
        raise KeyError("crash")

    with pytest.raises(KeyError):
        flask_app.test_client().get("/crash")
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_outside_requests_nothing_is_committed_implicitly(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """In an app context or a CLI command the session works, is closed with
    the context, and only explicit commits are kept.
    """
    with flask_app.app_context():
        uow.session.add(Item(name="implicit"))
        uow.session.flush()
        assert uow.session.scalars(sa.select(Item.name)).all() == ["implicit"]

    @flask_app.cli.command("seed")
    def seed() -> None:
        uow.session.add(Item(name="cli-implicit"))
        uow.session.flush()

    @flask_app.cli.command("seed-commit")
    def seed_commit() -> None:
        uow.session.add(Item(name="cli-explicit"))
        uow.session.commit()

    runner = flask_app.test_cli_runner()
    assert runner.invoke(seed).exit_code == 0
    assert runner.invoke(seed_commit).exit_code == 0
    assert db.names() == ["cli-explicit"]


def test_nested_app_context_in_a_request_shares_the_request_session(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Pushing the same app's context inside a view neither splits nor closes
    the request's session.
    """

    @flask_app.post("/nested")
    def nested() -> str:
        outer = uow.session()
        outer.add(Item(name="outer"))
        with current_app.app_context():
            same = uow.session() is outer
            uow.session.add(Item(name="inner"))
        return str(same and uow.session() is outer)

    assert flask_app.test_client().post("/nested").data == b"True"
    assert db.names() == ["inner", "outer"]


def two_apps(
    make_app: AppFactory, tmp_path: pathlib.Path
) -> tuple[Flask, Flask, Database, Database]:
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("one", "two")]
    apps = [make_app(UOW_ENGINES={"default": url}) for url in urls]
    databases = [Database(url) for url in urls]
    for database in databases:
        metadata.create_all(database.engine)
    return apps[0], apps[1], databases[0], databases[1]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_one_instance_serves_two_apps(
    make_app: AppFactory, uow: UnitOfWork, tmp_path: pathlib.Path
) -> None:
    """Two apps on one UnitOfWork keep their databases and sessions apart,
    even when one app's context is pushed inside the other's request.
    """
    one, two, db_one, db_two = two_apps(make_app, tmp_path)

    @one.post("/items/<name>")
    def add_item(name: str) -> str:
        uow.session.add(Item(name=name))
        with two.app_context():
            uow.session.add(Item(name=f"{name}-in-two"))
            uow.session.commit()
        return "ok"

    assert one.test_client().post("/items/a").status_code == 200
    assert db_one.names() == ["a"]
    assert db_two.names() == ["a-in-two"]
    with one.app_context():
        engine_one = uow.engine
    with two.app_context():
        assert uow.engine is not engine_one
    for database in (db_one, db_two):
        database.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_engines_are_disposed_with_the_app(db_url: str, tmp_path: pathlib.Path) -> None:
    """When the app is garbage collected its pooled connections are closed."""
    uow = UnitOfWork()
    app = Flask("gc_app", root_path=str(tmp_path), instance_path=str(tmp_path))
    app.config["UOW_ENGINES"] = {"default": db_url}
    uow.init_app(app)
    watch = watch_pools(uow, app)
    with app.app_context():
        uow.session.execute(sa.select(1))
        pool = uow.engine.pool
    assert pool.checkedin() == 1  # type: ignore[attr-defined]
    check_no_leaks(uow, app, watch)
    del app
    gc.collect()
    assert pool.checkedin() == 0  # type: ignore[attr-defined]
    assert len(uow._states) == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_dispose_engines_closes_pooled_connections(
    flask_app: Flask, uow: UnitOfWork
) -> None:
    """dispose_engines() closes idle connections; the engine stays usable."""
    with flask_app.app_context():
        uow.session.execute(sa.select(1))
        pool = uow.engine.pool
    assert pool.checkedin() == 1  # type: ignore[attr-defined]
    uow.dispose_engines(flask_app)
    assert pool.checkedin() == 0  # type: ignore[attr-defined]
    with flask_app.app_context():
        uow.session.execute(sa.select(1))
        inherited = uow.engine.pool
    uow.dispose_engines(flask_app, close=False)
    assert inherited.checkedin() == 1  # type: ignore[attr-defined]
    assert uow_engine(flask_app, uow).pool is not inherited
    with flask_app.app_context():
        assert uow.session.execute(sa.select(1)).scalar() == 1
        uow.dispose_engines()
