"""A change to an object whose unit of work has ended is warned about, or
refused with ``UOW_DETACHED_WRITES = "raise"``, never silently lost.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import g

from flask_uow import DetachedWriteWarning
from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Child
from .models import Item
from .models import metadata
from .models import Parent

TABLES = [metadata.tables["parents"], metadata.tables["children"]]


def cached_item_app(make_app: AppFactory, uow: UnitOfWork, **config: t.Any) -> Flask:
    """Flask-Login's pattern: a view caches an object in ``g``; a test that
    pushed one application context sees it in every later request.
    """
    app = make_app(**config)

    @app.post("/items/<name>")
    def add(name: str) -> str:
        uow.session.add(Item(name=name))
        return "added"

    @app.post("/load")
    def load() -> str:
        g.item = uow.session.scalars(sa.select(Item)).one()
        return "loaded"

    @app.post("/rename/<name>")
    def rename(name: str) -> str:
        g.item.name = name
        return "renamed"

    @app.post("/merge/<name>")
    def merge(name: str) -> str:
        item = uow.session.merge(g.item)
        item.name = name
        return "merged"

    return app


def test_warned_in_testing_mode(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """In testing mode a later request's change to the cached object warns,
    naming the attribute, the object and the fix, at the line that set it.
    """
    app = cached_item_app(make_app, uow, TESTING=True)
    client = app.test_client()
    client.post("/items/first")
    with app.app_context():
        client.post("/load")
        with pytest.warns(DetachedWriteWarning) as record:
            assert client.post("/rename/renamed").status_code == 200
    [warning] = record
    message = str(warning.message)
    assert "'name' of <tests.models.Item object" in message
    assert "uow.session.get(Item, ...)" in message
    assert "uow.session.merge(obj)" in message
    assert warning.filename == __file__
    assert db.names() == ["first"]  # The change was not saved, as warned.


def test_raise_refuses_the_change(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """With 'raise' the assignment raises, so the request fails."""
    app = cached_item_app(make_app, uow, TESTING=True, UOW_DETACHED_WRITES="raise")
    client = app.test_client()
    client.post("/items/first")
    with app.app_context():
        client.post("/load")
        with pytest.raises(RuntimeError, match=r"'name' of .*session\.merge"):
            client.post("/rename/renamed")
    assert db.names() == ["first"]


def test_merge_is_the_fix(make_app: AppFactory, uow: UnitOfWork, db: Database) -> None:
    """Merging the cached object into the current unit first saves the change,
    without a warning (warnings are errors in this suite).
    """
    app = cached_item_app(make_app, uow, TESTING=True, UOW_DETACHED_WRITES="raise")
    client = app.test_client()
    client.post("/items/first")
    with app.app_context():
        client.post("/load")
        assert client.post("/merge/merged").status_code == 200
    assert db.names() == ["merged"]


def test_off_by_default_in_production(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Outside debug and testing nothing is attached, and nothing is said."""
    app = cached_item_app(make_app, uow)
    assert app.config["UOW_DETACHED_WRITES"] == "off"
    with app.app_context():
        assert not uow.session().dispatch.persistent_to_detached
    client = app.test_client()
    client.post("/items/first")
    with app.app_context():
        client.post("/load")
        assert client.post("/rename/renamed").status_code == 200
    assert db.names() == ["first"]


def test_debug_mode_warns_too(make_app: AppFactory, uow: UnitOfWork) -> None:
    """The default is 'warn' in debug mode."""
    app = make_app(DEBUG=True)
    assert app.config["UOW_DETACHED_WRITES"] == "warn"


def test_objects_still_in_a_unit_or_never_in_one_are_quiet(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Only objects detached by the end of their unit are reported: not one
    expunged by the app, a new one, or one added again to a later unit.
    """
    app = make_app(UOW_DETACHED_WRITES="raise")
    with app.app_context():
        uow.session.add(Item(name="a"))
        uow.session.commit()
        item = uow.session.scalars(sa.select(Item)).one()
        uow.session.expunge(item)
        item.name = "expunged"  # The app's own choice: not reported.
        fresh = Item(name="new")
        fresh.name = "transient"
    with app.app_context():
        loaded = uow.session.scalars(sa.select(Item)).one()
    with app.app_context():
        uow.session.add(loaded)  # Attached again: its changes are saved.
        loaded.name = "again"
        uow.session.commit()
    assert db.names() == ["again"]
    with pytest.raises(RuntimeError, match="'name' of"):
        loaded.name = "after"


def test_relationships_are_watched(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """Appending to or removing from a collection, and setting a many-to-one,
    of an object of an ended unit are reported too.
    """
    app = make_app(TESTING=True, UOW_SESSION_OPTIONS={"expire_on_commit": False})
    with app.app_context():
        with uow.engine.begin() as connection:
            metadata.create_all(connection, TABLES)
    try:
        with app.app_context():
            parent = Parent(name="p", children=[Child()])
            uow.session.add_all([parent, Parent(name="q")])
            uow.session.commit()
        with app.app_context():  # Loaded, committed: nothing left to expire.
            parent = uow.session.scalars(
                sa.select(Parent)
                .filter_by(name="p")
                .options(orm.selectinload(Parent.children))
            ).one()
            child = parent.children[0]
            other = uow.session.scalars(sa.select(Parent).filter_by(name="q")).one()
            uow.session.commit()
        with pytest.warns(DetachedWriteWarning, match="'children' of"):
            parent.children.append(Child())
        with pytest.warns(DetachedWriteWarning) as record:
            parent.children.remove(child)  # And the backref sets child.parent.
        assert {str(w.message)[:12] for w in record} == {"'children' o", "'parent' of "}
        with pytest.warns(DetachedWriteWarning) as record:
            child.parent = other
        assert {str(w.message)[:12] for w in record} == {
            "'parent' of ",
            "'children' o",  # The backref appends to other.children.
        }
        assert db.scalar("SELECT COUNT(*) FROM children WHERE parent_id = 1") == 1
    finally:
        with app.app_context():
            with uow.engine.begin() as connection:
                Parent.metadata.drop_all(connection, TABLES[::-1])


@pytest.mark.parametrize("value", ["loud", True, None])
def test_bad_value_is_refused(make_app: AppFactory, value: t.Any) -> None:
    """Anything but 'warn', 'raise' or 'off' is a ValueError naming them."""
    with pytest.raises(ValueError, match=r"'UOW_DETACHED_WRITES' must be 'warn'"):
        make_app(UOW_DETACHED_WRITES=value)
