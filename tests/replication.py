"""A primary database and its replica for the read-replica tests, with an app
whose views tell which server served them.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import pathlib
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import has_app_context
from flask import has_request_context
from flask import request

from flask_uow import UnitOfWork

from .models import Item
from .models import metadata
from .pgcluster import Cluster

#: The database of the read-replica tests on the PostgreSQL cluster.
DATABASE = "replicas"


@dataclasses.dataclass
class Pair:
    """The URLs of a primary and its replica. On PostgreSQL the replica
    streams from the primary; on SQLite it is a second file that never
    changes, so its data stays older than the primary's.
    """

    backend: str
    primary: str
    replica: str
    cluster: Cluster | None = None

    def caught_up(self) -> None:
        """Wait until the replica has replayed all the primary wrote."""
        if self.cluster is not None:
            self.cluster.wait_replayed()


def postgresql_pair(cluster: Cluster) -> Pair:
    """Empty test tables on the cluster, replayed by the replica."""
    cluster.reset()
    if not cluster.primary.scalar(
        f"SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'"
    ):
        cluster.primary.scalar(f'CREATE DATABASE "{DATABASE}"')
    primary = cluster.primary.url(DATABASE).render_as_string(False)
    create_tables(primary)
    cluster.wait_replayed()
    replica = cluster.replica.url(DATABASE).render_as_string(False)
    return Pair("postgresql", primary, replica, cluster)


def sqlite_pair(folder: pathlib.Path) -> Pair:
    primary = f"sqlite:///{folder / 'primary.db'}"
    replica = f"sqlite:///{folder / 'replica.db'}"
    for url in (primary, replica):
        create_tables(url)
    return Pair("sqlite", primary, replica)


def create_tables(url: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()


def names(url: str) -> list[str]:
    """The item names in the database at *url*, read on a new connection."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(sa.text("SELECT name FROM items ORDER BY name")))
    finally:
        engine.dispose()


def served_by(session: orm.Session) -> str:
    """``"primary"`` or ``"replica"``: the server the session's default
    engine reads from, as the server itself says.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        in_recovery = conn.scalar(sa.text("SELECT pg_is_in_recovery()"))
        return "replica" if in_recovery else "primary"
    path = conn.execute(sa.text("PRAGMA database_list")).all()[0][2]
    return "replica" if path.endswith("replica.db") else "primary"


def add_views(app: Flask, uow: UnitOfWork) -> None:
    def listing() -> dict[str, t.Any]:
        session = uow.session()
        found = session.scalars(sa.select(Item.name).order_by(Item.name))
        return {"names": list(found), "server": served_by(session)}

    @app.get("/items")
    def items() -> dict[str, t.Any]:
        return listing()

    @app.post("/items")
    def add() -> tuple[dict[str, t.Any], int]:
        uow.session.add(Item(name=request.form["name"]))
        uow.session.flush()
        return listing(), 201

    @app.get("/write")
    def write() -> dict[str, t.Any]:
        uow.session.add(Item(name="from get"))
        return listing()

    @app.get("/write-primary")
    @uow.primary
    def write_primary() -> dict[str, t.Any]:
        uow.session.add(Item(name="from get"))
        return listing()

    @app.get("/write-core")
    def write_core() -> dict[str, t.Any]:
        uow.session.execute(sa.insert(Item).values(name="core"))
        return listing()

    @app.get("/write-text")
    def write_text() -> dict[str, t.Any]:
        uow.session.execute(sa.text("INSERT INTO items (name) VALUES ('text')"))
        return listing()

    @app.get("/block")
    def block() -> dict[str, t.Any]:
        before = served_by(uow.session())
        with uow.transaction() as session:
            session.add(Item(name="in block"))
        return {**listing(), "before": before}


AppFactory = cabc.Callable[..., Flask]


def app_factory(
    uow: UnitOfWork, pair: Pair, folder: pathlib.Path
) -> tuple[AppFactory, cabc.Callable[[], None]]:
    """A function that builds apps on *pair*, and one that checks them for
    leaks and disposes their engines.
    """
    apps: list[tuple[Flask, list[sa.Engine]]] = []

    def make(**config: t.Any) -> Flask:
        app = Flask(
            f"replicas{len(apps)}",
            root_path=str(folder),
            instance_path=str(folder / "instance"),
        )
        app.config["SECRET_KEY"] = "a test secret"
        app.config["UOW_ENGINES"] = {
            "default": {"url": pair.primary, "replicas": [pair.replica]}
        }
        app.config["UOW_REPLICA_BACKOFF"] = 0
        app.config.update(config)
        uow.init_app(app)
        add_views(app, uow)
        with app.app_context():
            engines = [*uow.engines.values()]
            for replicas in uow.replica_engines.values():
                engines.extend(replicas)
        apps.append((app, engines))
        return app

    def finish() -> None:
        for app, engines in apps:
            try:
                assert not has_request_context(), "a request context was left"
                assert not has_app_context(), "an app context was left"
                # Counted by the pools themselves: a connection that a
                # stopped server broke is checked in without a checkout event.
                out = {e.url: e.pool.checkedout() for e in engines}  # type: ignore[attr-defined]
                assert not any(out.values()), f"connections left checked out: {out}"
            finally:
                uow.dispose_engines(app)

    return make, finish
