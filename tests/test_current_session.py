"""``uow.session`` is one object, taken anywhere (at import time, before any
app), that resolves to the current unit's session each time it is used.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import abort
from flask import Flask

from flask_uow import CurrentSession
from flask_uow import Isolation
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item


def add_routes(app: Flask, session: CurrentSession) -> None:
    """Views that write through a session taken before the app existed."""

    @app.post("/items/<name>")
    def add(name: str) -> str:
        session.add(Item(name=name))
        return "added"

    @app.post("/fail/<name>")
    def fail(name: str) -> str:
        session.add(Item(name=name))
        session.flush()
        abort(500)


def test_import_time_session_follows_the_request(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """A session taken before init_app commits with a successful request and
    rolls back with a failed one.
    """
    session = uow.session
    app = make_app()
    add_routes(app, session)
    client = app.test_client()
    assert client.post("/items/kept").status_code == 200
    assert client.post("/fail/lost").status_code == 500
    assert db.names() == ["kept"]


def test_import_time_session_is_isolated(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """Under test isolation the import-time session writes inside the
    isolation: the test sees the rows, nothing survives it.
    """
    session = uow.session
    app = make_app()
    add_routes(app, session)
    with Isolation(app):
        assert app.test_client().post("/items/a").status_code == 200
        with app.app_context():
            assert session.scalars(sa.select(Item.name)).all() == ["a"]
            session.add(Item(name="from-body"))
            session.flush()
    assert db.names() == []


def test_listener_on_the_session_reaches_every_app(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """sa.event.listen(uow.session, ...) before any init_app sees the commits
    of every app set up later, and only of this UnitOfWork's sessions.
    """
    committed: list[orm.Session] = []
    sa.event.listen(uow.session, "after_commit", committed.append)
    first, second = make_app(), make_app()
    for app in (first, second):
        add_routes(app, uow.session)
    assert first.test_client().post("/items/one").status_code == 200
    assert second.test_client().post("/items/two").status_code == 200
    other = UnitOfWork()
    other_app = Flask("other")
    other_app.config["UOW_ENGINES"] = {"default": db.url}
    other.init_app(other_app)
    try:
        with other_app.app_context():
            other.session.execute(sa.select(1))
            other.session.commit()
    finally:
        other.dispose_engines(other_app)
    assert len(committed) == 2
    assert all(isinstance(s, uow.session.session_class) for s in committed)
    assert db.names() == ["one", "two"]


def test_calling_it_gives_the_unit_session(
    uow: UnitOfWork, make_app: AppFactory
) -> None:
    """uow.session() is the current unit's own session: the same within a
    request, another in the next request and in an application context.
    """
    app = make_app()
    seen: list[orm.Session] = []

    @app.get("/")
    def view() -> str:
        seen.append(uow.session())
        seen.append(uow.session())
        return "ok"

    client = app.test_client()
    client.get("/")
    client.get("/")
    with app.app_context():
        body = uow.session()
        assert uow.session.registry.has()
        assert uow.session.registry() is body
        uow.session.registry.clear()  # As scoped_session.remove() does.
        assert not uow.session.registry.has()
    assert type(seen[0]) is not orm.Session
    assert isinstance(seen[0], uow.session.session_class)
    assert seen[0] is seen[1]
    assert seen[2] is not seen[0]
    assert body not in seen


def test_remove_ends_the_context_unit(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """remove() in an application context rolls back and closes the unit's
    session; the next use makes a new one.
    """
    app = make_app()
    with app.app_context():
        uow.session.remove()  # No session yet: nothing to do.
        first = uow.session()
        uow.session.add(Item(name="flushed"))
        uow.session.flush()
        uow.session.remove()
        assert not uow.session.registry.has()
        assert uow.session() is not first
        assert uow.session.scalars(sa.select(Item.name)).all() == []
        uow.session.add(Item(name="committed"))
        uow.session.commit()
    assert db.names() == ["committed"]


def test_remove_in_a_request_keeps_the_request_unit(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """remove() in a view discards the work so far; what the view writes
    afterwards is still committed by the request.
    """
    app = make_app()

    @app.post("/")
    def view() -> str:
        uow.session.add(Item(name="discarded"))
        uow.session.flush()
        uow.session.remove()
        uow.session.add(Item(name="after-remove"))
        return "ok"

    assert app.test_client().post("/").status_code == 200
    assert db.names() == ["after-remove"]


def test_remove_inside_a_block_is_refused(
    uow: UnitOfWork, make_app: AppFactory, db: Database
) -> None:
    """remove() inside uow.transaction() would end the block's transaction:
    it is refused, and the block still commits.
    """
    app = make_app()
    with app.app_context():
        with uow.transaction():
            uow.session.add(Item(name="block"))
            with pytest.raises(RuntimeError, match=r"after the block"):
                uow.session.remove()
    assert db.names() == ["block"]


def test_misuse_is_explained(uow: UnitOfWork, make_app: AppFactory) -> None:
    """Arguments, configure() and set() are refused with the way to do it."""
    app = make_app()
    with app.app_context():
        with pytest.raises(TypeError, match="UOW_SESSION_OPTIONS"):
            uow.session(autoflush=False)
        with pytest.raises(RuntimeError, match="UOW_SESSION_OPTIONS"):
            uow.session.configure(autoflush=False)
        with pytest.raises(RuntimeError, match="each unit makes its own"):
            uow.session.registry.set(uow.session())


def test_what_extensions_probe_works_without_a_context() -> None:
    """At import time the object passes the checks extensions make on a
    session (Flask-Admin's type check and its 'session' probe,
    marshmallow-sqlalchemy's truth test) without a context; using it raises
    the clear error.
    """
    uow = UnitOfWork()
    session = uow.session
    assert isinstance(session, orm.scoped_session)
    assert not hasattr(session, "session")
    assert bool(session)
    assert not session.registry.has()
    assert "current unit of work" in repr(session)
    for use in (
        session,
        lambda: session.execute(sa.select(1)),
        lambda: session.info,
        session.in_transaction,
        session.remove,
    ):
        with pytest.raises(RuntimeError, match="outside of application context"):
            use()


def test_an_app_of_another_unit_of_work_is_refused(make_app: AppFactory) -> None:
    """Used in an app that this UnitOfWork does not know, it says so."""
    app = make_app()
    other = UnitOfWork()
    with app.app_context():
        with pytest.raises(RuntimeError, match=r"init_app"):
            other.session.execute(sa.select(1))


def test_session_methods_scoped_session_lacks(
    uow: UnitOfWork, make_app: AppFactory
) -> None:
    """The Session methods that scoped_session does not proxy are there too."""
    app = make_app(UOW_SESSION_OPTIONS={"expire_on_commit": False})
    with app.app_context():
        session = uow.session
        assert not session.in_transaction()
        assert session.get_transaction() is None
        session.execute(sa.select(1))
        assert session.in_transaction()
        assert session.get_transaction() is session().get_transaction()
        with session.begin_nested():
            assert session.in_nested_transaction()
            assert session.get_nested_transaction() is not None
        assert session.expire_on_commit is False
        session.expire_on_commit = True
        assert session().expire_on_commit is True
        item = Item(name="loading")
        session.enable_relationship_loading(item)
        session.rollback()
