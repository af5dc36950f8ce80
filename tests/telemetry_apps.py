"""Apps for the telemetry tests: views whose units commit, roll back, have
their COMMIT refused by the aborted-transaction guard, or fail at COMMIT.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask
from flask import request

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .models import Item
from .models import tags
from .test_aborted_transactions import fail_caught

#: A SQLite table whose foreign key is checked only at COMMIT.
DEFERRED_SQLITE = """
CREATE TABLE IF NOT EXISTS refs (
    id INTEGER PRIMARY KEY,
    item_id INTEGER REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED
)
"""


def traced_app(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    *,
    engine_options: dict[str, t.Any] | None = None,
    **config: t.Any,
) -> Flask:
    """An app with ``UOW_OPENTELEMETRY`` on (unless *config* says otherwise)
    and a view per outcome. Its connections are not pooled, so that settings
    a test changed on one are not used again.
    """
    engine = {"url": db_url, "poolclass": sa.NullPool, **(engine_options or {})}
    config.setdefault("UOW_OPENTELEMETRY", True)
    app = make_app(UOW_ENGINES={"default": engine}, **config)
    if backend == "sqlite":
        with app.app_context():
            sa.event.listen(uow.engine, "connect", _sqlite_foreign_keys)
            with uow.engine.begin() as conn:
                conn.exec_driver_sql(DEFERRED_SQLITE)
    add_views(app, uow, backend)
    return app


def _sqlite_foreign_keys(dbapi_connection: t.Any, record: object) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def fail_at_commit(session: t.Any, backend: str) -> None:
    """Write rows that break a constraint checked only at COMMIT."""
    if backend == "postgresql":
        session.execute(sa.insert(tags), [{"name": "same"}, {"name": "same"}])
    else:
        session.execute(sa.text("INSERT INTO refs (item_id) VALUES (424242)"))


def add_views(app: Flask, uow: UnitOfWork, backend: str) -> None:
    @app.get("/items")
    def listing() -> dict[str, t.Any]:
        names = uow.session.scalars(sa.select(Item.name).order_by(Item.name))
        return {"names": list(names)}

    @app.post("/items")
    def add() -> tuple[str, int]:
        uow.session.add(Item(name=request.form["name"]))
        uow.session.flush()
        return "created", 201

    @app.post("/veto")
    def veto() -> tuple[str, int]:
        uow.session.add(Item(name="vetoed"))
        uow.session.flush()
        return "refused", 409

    @app.post("/aborted")
    def aborted() -> str:
        uow.session.add(Item(name="lost"))
        uow.session.flush()
        fail_caught(uow.session(), backend)
        return "ok"

    @app.post("/commit-fails")
    def commit_fails() -> str:
        fail_at_commit(uow.session, backend)
        return "ok"

    @app.get("/nothing")
    def nothing() -> str:
        return "no database"

    @app.post("/block")
    def block() -> str:
        with uow.transaction() as session:
            session.add(Item(name="in block"))
        return "ok"
