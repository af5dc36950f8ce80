"""Which unit of work an application context gets when a request context is
pushed but not handled by the app: pytest-flask's, or
``app.test_request_context()``'s.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_uow import UnitOfWork

from .conftest import Database
from .models import Item


def add_views(app: Flask, uow: UnitOfWork) -> None:
    @app.post("/items/<name>")
    def add(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return name, 201

    @app.get("/items")
    def names() -> list[str]:
        return list(uow.session.scalars(sa.select(Item.name).order_by(Item.name)))


class TestWithPytestFlask:
    """pytest-flask pushes a test request context for every test that has an
    ``app`` fixture; the app never handles it.
    """

    @pytest.fixture
    def app(self, flask_app: Flask, uow: UnitOfWork) -> Flask:
        add_views(flask_app, uow)
        return flask_app

    def test_read_in_an_app_context_does_not_block_a_writing_request(
        self, app: Flask, client: FlaskClient, uow: UnitOfWork, db: Database
    ) -> None:
        """A read in a test's app context ends with the block, so a request
        that writes next succeeds (on SQLite it failed with "database is
        locked") and its row is committed.
        """
        with app.app_context():
            assert uow.session.scalars(sa.select(Item)).all() == []
        assert client.post("/items/a").status_code == 201
        assert db.names() == ["a"]

    def test_each_app_context_has_its_own_unit(
        self, app: Flask, uow: UnitOfWork, db: Database
    ) -> None:
        """A block's session is not the test body's, and what it did not
        commit is rolled back when the block ends.
        """
        body = uow.session()
        with app.app_context():
            first = uow.session()
            first.add(Item(name="kept"))
            first.commit()
            first.add(Item(name="dropped"))
            first.flush()
        with app.app_context():
            second = uow.session()
            names = list(second.scalars(sa.select(Item.name)))
        assert len({id(body), id(first), id(second)}) == 3
        assert names == ["kept"]
        assert db.names() == ["kept"]

    def test_requests_inside_an_app_context_get_a_unit_each(
        self, app: Flask, client: FlaskClient, db: Database
    ) -> None:
        """Requests made in a test's app context commit one by one; a failed
        one rolls back only its own work.
        """
        with app.app_context():
            assert client.post("/items/a").status_code == 201
            assert client.post("/items/b").status_code == 201
            assert client.post("/items/a").status_code == 500
            assert client.get("/items").json == ["a", "b"]
        assert db.names() == ["a", "b"]

    def test_objects_read_in_a_block_are_fresh_in_the_next(
        self, app: Flask, client: FlaskClient, uow: UnitOfWork
    ) -> None:
        """An app context reads what requests committed after an earlier block."""
        with app.app_context():
            assert uow.session.scalars(sa.select(Item.name)).all() == []
        client.post("/items/a")
        with app.app_context():
            assert uow.session.scalars(sa.select(Item.name)).all() == ["a"]


def test_app_context_in_a_test_request_context_has_its_own_unit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Inside app.test_request_context(), each pushed app context gets its own
    session, closed when it is popped; the request context's own session
    lasts until the request context is popped.
    """
    with flask_app.test_request_context():
        outer = uow.session()
        outer.add(Item(name="outer"))
        with flask_app.app_context():
            inner = uow.session()
            inner.add(Item(name="inner"))
            inner.commit()
        assert inner is not outer
        assert uow.session() is outer
        outer.commit()
    assert db.names() == ["inner", "outer"]


def test_request_context_in_an_app_context_uses_the_app_context_unit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A test request context pushed in an app context shares its app context
    (as Flask does) and its unit, which popping the request context leaves
    open.
    """
    with flask_app.app_context():
        outer = uow.session()
        outer.add(Item(name="a"))
        with flask_app.test_request_context():
            assert uow.session() is outer
        assert uow.session() is outer
        outer.commit()
    assert db.names() == ["a"]


def test_requests_in_a_test_request_context_get_a_unit_each(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Test client requests made inside app.test_request_context() are
    handled, so each has its own unit and commits.
    """
    add_views(flask_app, uow)
    client = flask_app.test_client()
    with flask_app.test_request_context():
        with flask_app.app_context():
            assert client.post("/items/a").status_code == 201
            assert client.post("/items/b").status_code == 201
            names = uow.session.scalars(sa.select(Item.name).order_by(Item.name))
            assert names.all() == ["a", "b"]
    assert db.names() == ["a", "b"]
