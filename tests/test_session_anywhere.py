"""Specification of issue 20, sections 2 to 4: ``uow.session`` taken at import
time, a test body that reads between requests, in-memory SQLite, and writes to
objects of a finished unit. These fail until the core supports them.
"""

from __future__ import annotations

import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import g

from flask_uow import Isolation
from flask_uow import UnitOfWork

from .models import Base
from .models import Item


def build(
    url: str, tmp_path: pathlib.Path, **config: t.Any
) -> tuple[Flask, UnitOfWork, t.Any]:
    uow = UnitOfWork(metadata=Base)
    session = uow.session  # At import time: before any app or context.
    app = Flask("anywhere", instance_path=str(tmp_path / "instance"))
    app.config["UOW_ENGINES"] = {"default": url}
    app.config.update(config)
    uow.init_app(app)

    @app.post("/items/<name>")
    def add(name: str) -> str:
        session.add(Item(name=name))
        return "added"

    with app.app_context():
        uow.drop_all()
        uow.create_all()
    return app, uow, session


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if request.param == "sqlite-memory":
        return "sqlite://"
    return t.cast(str, request.getfixturevalue("postgresql_database"))


def test_session_taken_at_import_raises_outside_context(tmp_path: pathlib.Path) -> None:
    """Used with no context, the import-time session raises the clear error."""
    app, uow, session = build(f"sqlite:///{tmp_path / 'a.db'}", tmp_path)
    with pytest.raises(RuntimeError, match="outside of application context"):
        session.execute(sa.select(1))


def test_event_listener_on_import_time_session(tmp_path: pathlib.Path) -> None:
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

    with app.app_context():
        uow.create_all()
    app.test_client().post("/")
    assert seen == [1]  # The request's one commit.


@pytest.mark.parametrize("isolated", [False, True], ids=["committing", "isolated"])
def test_body_reads_what_requests_committed(
    url: str, tmp_path: pathlib.Path, isolated: bool
) -> None:
    """cookiecutter-flask's test_can_register: count, post, count again."""
    app, uow, session = build(url, tmp_path)
    isolation = Isolation(app) if isolated else None
    if isolation is not None:
        isolation.start()
    try:
        with app.app_context():
            before = session.scalar(sa.select(sa.func.count()).select_from(Item))
            client = app.test_client()
            assert client.post("/items/a").status_code == 200
            assert client.post("/items/b").status_code == 200
            after = session.scalar(sa.select(sa.func.count()).select_from(Item))
            assert after - before == 2
    finally:
        if isolation is not None:
            isolation.stop()
        with app.app_context():
            uow.drop_all()


@pytest.mark.parametrize("mode", ["warn", "raise"])
def test_write_to_object_of_finished_unit(tmp_path: pathlib.Path, mode: str) -> None:
    """Flask-Login's pattern: a user cached in g of the pushed context is changed
    in a later request; the write is warned about, or refused with 'raise'.
    """
    config = {"UOW_DETACHED_WRITES": "raise"} if mode == "raise" else {}
    app, uow, session = build(
        f"sqlite:///{tmp_path / 'd.db'}", tmp_path, TESTING=True, **config
    )

    @app.post("/load")
    def load() -> str:
        g.item = session.scalars(sa.select(Item)).one()
        return "loaded"

    @app.post("/rename")
    def rename() -> str:
        g.item.name = "renamed"
        return "renamed"

    client = app.test_client()
    client.post("/items/first")
    with app.app_context():  # As pytest-flask: one g for every request.
        client.post("/load")
        if mode == "raise":
            with pytest.raises(RuntimeError, match="name"):
                client.post("/rename")
        else:
            with pytest.warns(UserWarning, match="merge"):
                client.post("/rename")
