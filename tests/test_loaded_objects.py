"""Objects a request loaded stay readable after it; commits in the middle of a
unit of work still expire them.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from flask import g

from flask_uow import UnitOfWork

from .conftest import Database
from .models import Item


def test_object_on_g_is_readable_after_a_read_request(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An object loaded by a before_request hook (flaskr's g.user) is readable
    once the request is over: detached, not expired.
    """
    with db.engine.begin() as conn:
        conn.execute(sa.insert(Item).values(name="ann"))

    @flask_app.before_request
    def load_user() -> None:
        g.user = uow.session.scalars(sa.select(Item)).one()

    @flask_app.get("/")
    def index() -> str:
        return g.user.name  # type: ignore[no-any-return]

    client = flask_app.test_client()
    with client:
        assert client.get("/").data == b"ann"
        assert g.user.name == "ann"
        state = sa.inspect(g.user)
        assert state.detached and not state.expired_attributes


def test_written_object_keeps_its_committed_values(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An object changed by a request holds the values it committed, without
    a database round trip, after the request.
    """
    kept: list[Item] = []

    @flask_app.post("/<name>")
    def add(name: str) -> str:
        item = Item(name=name)
        uow.session.add(item)
        uow.session.flush()
        item.name = f"{name}!"
        kept.append(item)
        return ""

    assert flask_app.test_client().post("/bob").status_code == 200
    assert db.names() == ["bob!"]
    assert (kept[0].name, kept[0].id) == ("bob!", db.scalar("SELECT id FROM items"))


def test_commit_inside_a_request_still_expires(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """After a view's own uow.session.commit(), objects are reloaded on next
    access and see what another connection committed meanwhile.
    """
    with db.engine.begin() as conn:
        conn.execute(sa.insert(Item).values(name="old"))

    @flask_app.get("/")
    def index() -> str:
        item = uow.session.scalars(sa.select(Item)).one()
        uow.session.commit()
        with db.engine.begin() as conn:
            conn.execute(sa.update(Item).values(name="new"))
        return item.name

    assert flask_app.test_client().get("/").data == b"new"


def test_commit_outside_requests_still_expires(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """In an app context, a commit expires objects as the session is set up to."""
    with flask_app.app_context():
        item = Item(name="a")
        uow.session.add(item)
        uow.session.commit()
        assert sa.inspect(item).expired_attributes == {"id", "name"}
    assert db.names() == ["a"]


def test_expire_on_commit_is_restored_after_a_failed_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """When the end-of-request commit fails, the error handler's session still
    expires on commit as configured.
    """
    with db.engine.begin() as conn:
        conn.execute(sa.insert(Item).values(name="taken"))
    seen: list[bool] = []

    @flask_app.errorhandler(sa.exc.IntegrityError)
    def conflict(e: Exception) -> tuple[str, int]:
        seen.append(uow.session.expire_on_commit)
        return "taken", 409

    @flask_app.post("/")
    def add() -> str:
        uow.session.add(Item(name="taken"))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 409
    assert seen == [True]
    assert db.names() == ["taken"]
