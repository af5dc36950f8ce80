"""The same small application, built six ways."""

from __future__ import annotations

import collections.abc as cabc
import functools
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask import Response
from flask_sqlalchemy import SQLAlchemy

from flask_uow import after_commit
from flask_uow import UnitOfWork


class Base(orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    value: orm.Mapped[int]


SEED_ROWS = 1000
VARIANTS = (
    "plain",
    "baseline",
    "same-guarantees",
    "flask-sqlalchemy",
    "uow",
    "uow-transactional",
)
#: flask_uow's pragmas for a SQLite file, set by the same-guarantees app too.
SQLITE_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
)
#: The variants that serve only ``/nodb``.
NO_DATABASE = frozenset({"plain"})


def add_routes(
    app: Flask,
    session: cabc.Callable[[], orm.Session | orm.scoped_session[orm.Session]],
    commit: bool,
    wrap: cabc.Callable[[t.Any], t.Any] = lambda view: view,
) -> None:
    """The benchmark's views. *commit*: the view commits itself (the
    baseline and Flask-SQLAlchemy); *wrap* decorates the database views.
    """

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/one/<int:item_id>")
    @wrap
    def one(item_id: int) -> str:
        return session().get_one(Item, item_id).name

    @app.get("/twenty")
    @wrap
    def twenty() -> str:
        items = session().scalars(sa.select(Item).order_by(Item.id).limit(20))
        return ",".join(item.name for item in items)

    @app.post("/insert")
    @wrap
    def insert() -> tuple[str, int]:
        session().add(Item(name="new", value=1))
        if commit:
            session().commit()
        return "created", 201

    @app.post("/insert10")
    @wrap
    def insert10() -> tuple[str, int]:
        session().add_all([Item(name=f"new{i}", value=i) for i in range(10)])
        if commit:
            session().commit()
        return "created", 201


def baseline(url: str) -> tuple[Flask, cabc.Callable[[], None]]:
    """Plain Flask with a hand-written scoped_session."""
    engine = sa.create_engine(url)
    Session = orm.scoped_session(orm.sessionmaker(engine))
    app = Flask("baseline")

    @app.teardown_appcontext
    def remove(exc: BaseException | None) -> None:
        Session.remove()

    add_routes(app, Session, commit=True)
    return app, engine.dispose


def plain(url: str) -> tuple[Flask, cabc.Callable[[], None]]:
    """Plain Flask with one ``teardown_appcontext`` function that does
    nothing, serving only ``/nodb``: the least a request can cost.
    """
    app = Flask("plain")

    @app.teardown_appcontext
    def teardown(exc: BaseException | None) -> None:
        pass

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    return app, lambda: None


def same_guarantees(url: str) -> tuple[Flask, cabc.Callable[[], None]]:
    """A hand-written ``scoped_session`` app with flask_uow's guarantees:
    views do not commit; the response commits when its status is below 400
    and rolls back otherwise (a failed commit rolls back and propagates);
    SQLite runs a real ``BEGIN``, so reads are inside the transaction;
    ``remove()`` at teardown. Like flask_uow's end-of-request commit, the
    commit does not expire the objects, which stay readable after it; and
    SQLite gets flask_uow's default pragmas.
    """
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        # SQLAlchemy's recipe for pysqlite: the driver emits no BEGIN of its
        # own, and the engine's begin event emits one. The pragmas are
        # flask_uow's defaults for a SQLite file, so that the database does
        # the same work (they run once per pooled connection).
        @sa.event.listens_for(engine, "connect")
        def connect(dbapi_connection: t.Any, record: t.Any) -> None:
            dbapi_connection.isolation_level = None
            for pragma in SQLITE_PRAGMAS:
                dbapi_connection.execute(pragma).close()

        @sa.event.listens_for(engine, "begin")
        def begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    Session = orm.scoped_session(orm.sessionmaker(engine, expire_on_commit=False))
    app = Flask("same_guarantees")

    @app.after_request
    def commit(response: Response) -> Response:
        if not Session.registry.has():
            return response
        if response.status_code >= 400:
            Session.rollback()
            return response
        try:
            Session.commit()
        except BaseException:
            Session.rollback()
            raise
        return response

    @app.teardown_appcontext
    def remove(exc: BaseException | None) -> None:
        Session.remove()

    add_routes(app, Session, commit=False)
    return app, engine.dispose


def flask_sqlalchemy(
    url: str, record: bool = False
) -> tuple[Flask, cabc.Callable[[], None]]:
    """Flask-SQLAlchemy 3.1, committing in the view."""
    db = SQLAlchemy()
    app = Flask("flask_sqlalchemy")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_RECORD_QUERIES"] = record
    db.init_app(app)
    add_routes(app, lambda: t.cast(orm.Session, db.session), commit=True)

    def dispose() -> None:
        with app.app_context():
            db.engine.dispose()

    return app, dispose


def uow(url: str, record: bool = False) -> tuple[Flask, cabc.Callable[[], None]]:
    """flask_uow, committing at the end of the request; *record*: with
    statement recording and N+1 detection, as in debug and testing mode.
    """
    unit_of_work = UnitOfWork()
    app = Flask("uow")
    app.config["UOW_ENGINES"] = {"default": url}
    app.config["UOW_RECORD_QUERIES"] = record
    app.config["UOW_N_PLUS_ONE"] = "warn" if record else "off"
    unit_of_work.init_app(app)
    add_routes(app, lambda: unit_of_work.session, commit=False)
    return app, lambda: unit_of_work.dispose_engines(app)


def uow_transactional(url: str) -> tuple[Flask, cabc.Callable[[], None]]:
    """flask_uow with @uow.transactional views and an after_commit receiver."""
    unit_of_work = UnitOfWork()
    app = Flask("uow_transactional")
    app.config["UOW_ENGINES"] = {"default": url}
    unit_of_work.init_app(app)
    add_routes(
        app, lambda: unit_of_work.session, commit=False, wrap=unit_of_work.transactional
    )
    seen = []

    def count_changes(sender: Flask, *, changes: list[t.Any], **extra: t.Any) -> None:
        seen.append(len(changes))
        del seen[:-1]

    after_commit.connect(count_changes, app, weak=False)

    def dispose() -> None:
        # Without a sender: blinker then forgets the receiver altogether, so
        # that the apps built after this one see no receiver of the signal.
        after_commit.disconnect(count_changes)
        unit_of_work.dispose_engines(app)

    return app, dispose


Builder = cabc.Callable[[str], tuple[Flask, cabc.Callable[[], None]]]
BUILDERS: dict[str, Builder] = {
    "plain": plain,
    "same-guarantees": same_guarantees,
    "baseline": baseline,
    "flask-sqlalchemy": flask_sqlalchemy,
    "uow": uow,
    "uow-transactional": uow_transactional,
    "uow-recording": functools.partial(uow, record=True),
    "flask-sqlalchemy-recording": functools.partial(flask_sqlalchemy, record=True),
}


def create_tables(url: str) -> None:
    """Create the table afresh and seed it."""
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Item),
            [{"name": f"item{i}", "value": i} for i in range(1, SEED_ROWS + 1)],
        )
    engine.dispose()
