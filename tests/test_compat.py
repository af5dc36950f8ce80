"""flask_uow.compat in this process: the request lifecycle through
Flask-SQLAlchemy's API, checked from a separate connection, and the parts of
the API that Flask-SQLAlchemy's own suite (run in a subprocess) covers there.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.exceptions import NotFound

from flask_uow import UnitOfWork
from flask_uow.compat import SQLAlchemy
from flask_uow.compat.cli import add_models_to_shell
from flask_uow.compat.model import camel_to_snake_case
from flask_uow.compat.pagination import Pagination
from flask_uow.compat.record_queries import get_recorded_queries
from flask_uow.compat.session import Session
from flask_uow.compat.track_modifications import models_committed

from .conftest import Database


def make_app(
    url: str, tmp_path: t.Any, **config: t.Any
) -> tuple[Flask, SQLAlchemy, t.Any]:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SQLALCHEMY_DATABASE_URI=url, **config)
    db = SQLAlchemy()
    Model: t.Any = db.Model

    class TodoItem(Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(50), nullable=False)

    db.init_app(app)
    with app.app_context():
        db.drop_all()
        db.create_all()
    return app, db, TodoItem


def test_requests_commit_or_roll_back(db: Database, tmp_path: t.Any) -> None:
    """A successful request is committed without a commit in the view, a
    failed one rolled back, and a view's own commit still works.
    """
    app, fsa, Todo = make_app(db.url, tmp_path)
    assert Todo.__tablename__ == "todo_item"

    @app.post("/add/<title>")
    def add(title: str) -> str:
        fsa.session.add(Todo(title=title))
        return "ok"

    @app.post("/commit/<title>")
    def commit(title: str) -> str:
        fsa.session.add(Todo(title=title))
        fsa.session.commit()
        return "ok"

    @app.post("/fail")
    def fail() -> t.Any:
        fsa.session.add(Todo(title="failed"))
        return "no", 500

    client = app.test_client()
    assert client.post("/add/a").status_code == 200
    assert client.post("/commit/b").status_code == 200
    assert client.post("/fail").status_code == 500
    rows = (
        db.scalar("SELECT group_concat(title) FROM todo_item")
        if db.url.startswith("sqlite")
        else db.scalar("SELECT string_agg(title, ',' ORDER BY id) FROM todo_item")
    )
    assert rows == "a,b"
    with app.app_context():
        fsa.drop_all()
        fsa.uow.dispose_engines()


def test_api(tmp_path: t.Any) -> None:
    """The view helpers, pagination, binds, shell context and signals."""
    app, fsa, Todo = make_app(
        "sqlite://",
        tmp_path,
        SQLALCHEMY_BINDS={"other": "sqlite://"},
        SQLALCHEMY_RECORD_QUERIES=True,
        SQLALCHEMY_TRACK_MODIFICATIONS=True,
    )
    seen: list[t.Any] = []
    with (
        app.app_context(),
        models_committed.connected_to(
            lambda sender, changes: seen.extend(changes), app
        ),
    ):
        assert isinstance(fsa.session(), Session)
        assert fsa.engines["other"] is not fsa.engine
        assert "SQLAlchemy sqlite://" in repr(fsa)
        fsa.session.add_all([Todo(title=f"t{i}") for i in range(25)])
        fsa.session.commit()
        assert len(seen) == 25 and seen[0][1] == "insert"
        assert get_recorded_queries()[-1].parameters
        page = fsa.paginate(fsa.select(Todo).order_by(Todo.id), page=2, per_page=10)
        assert [p.title for p in page] == [f"t{i}" for i in range(10, 20)]
        assert (page.total, page.pages, page.prev_num, page.next_num) == (25, 3, 1, 3)
        assert page.next().items[-1].title == "t24"
        assert page.prev().first == 1 and page.last == 20
        legacy = Todo.query.order_by(Todo.id).paginate(page=3, per_page=10)
        assert len(legacy.items) == 5 and not legacy.has_next
        assert fsa.get_or_404(Todo, 1).title == "t0"
        assert fsa.first_or_404(fsa.select(Todo).filter_by(title="t3")).id == 4
        assert fsa.one_or_404(fsa.select(Todo).filter_by(title="t4")).id == 5
        assert Todo.query.get_or_404(2).title == "t1"
        assert Todo.query.filter_by(title="t2").one_or_404().id == 3
        calls: list[t.Callable[[], t.Any]] = [
            lambda: fsa.get_or_404(Todo, 99),
            lambda: fsa.first_or_404(fsa.select(Todo).filter_by(title="x")),
            lambda: fsa.one_or_404(fsa.select(Todo)),
            lambda: Todo.query.filter_by(title="x").first_or_404(),
            lambda: Todo.query.one_or_404(),
        ]
        for call in calls:
            with pytest.raises(NotFound):
                call()
        assert add_models_to_shell()["TodoItem"] is Todo
        with pytest.raises(ValueError, match="'nope' is not in"):
            fsa.create_all(bind_key="nope")
        fsa.session.remove()
    assert camel_to_snake_case("HTTPResponseCode") == "http_response_code"


def test_driver_defaults(tmp_path: t.Any) -> None:
    """The engine options Flask-SQLAlchemy's suite checks with a mock,
    checked with an override of ``_make_engine`` that returns real engines.
    """
    made: dict[str | None, dict[str, t.Any]] = {}

    class Recording(SQLAlchemy):
        def _make_engine(
            self, bind_key: t.Any, options: t.Any, app: Flask
        ) -> sa.Engine:
            made[bind_key] = dict(options)
            return sa.create_engine("sqlite://")

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    app.config["SQLALCHEMY_BINDS"] = {"my": "mysql:///test", "file": "sqlite:///x.db"}
    Recording(app)
    assert made[None]["poolclass"] is sa.StaticPool
    assert made[None]["connect_args"]["check_same_thread"] is False
    assert made["my"]["pool_recycle"] == 7200
    assert made["my"]["url"].query["charset"] == "utf8mb4"
    assert made["file"]["url"].database.startswith(app.instance_path)


def test_errors(tmp_path: t.Any) -> None:
    """Clear errors for what compat does not do."""
    with pytest.raises(ValueError, match="'scopefunc'"):
        SQLAlchemy(session_options={"scopefunc": id})
    with pytest.raises(TypeError, match="subclass of 'flask_uow.compat"):
        SQLAlchemy(session_options={"class_": sa.orm.Session})
    app = Flask(__name__, instance_path=str(tmp_path))
    with pytest.raises(RuntimeError, match="must be set"):
        SQLAlchemy(app)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    SQLAlchemy(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        SQLAlchemy(app)


def test_models(tmp_path: t.Any) -> None:
    """Table names, bind keys and ``repr``, for 1.x- and 2.x-style bases."""

    for style, autonaming in (("1.x", True), ("2.x", True), ("2.x", False)):
        kwargs: dict[str, t.Any] = {"disable_autonaming": not autonaming}
        if style == "2.x":
            kwargs["model_class"] = type("Base", (sa.orm.DeclarativeBase,), {})
        fsa = SQLAlchemy(**kwargs)
        Model: t.Any = fsa.Model

        class Account(Model):  # type: ignore[misc]
            __tablename__ = "account"
            __bind_key__ = "auth"
            id = sa.Column(sa.Integer, primary_key=True)
            kind = sa.Column(sa.String(10))
            __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "a"}

        class AdminAccount(Account):
            __mapper_args__ = {"polymorphic_identity": "admin"}

        assert Account.metadata is fsa.metadatas["auth"]
        assert AdminAccount.__table__ is Account.__table__
        assert "metadata" not in AdminAccount.__dict__
        table = fsa.Table("extra", sa.Column("id", sa.Integer), bind_key="auth")
        assert table.metadata is fsa.metadatas["auth"]
        if autonaming:

            class OrderLine(Model):  # type: ignore[misc]
                id = sa.Column(sa.Integer, primary_key=True)

            assert OrderLine.__tablename__ == "order_line"
        else:
            with pytest.raises(sa.exc.InvalidRequestError):

                class Unnamed(Model):  # type: ignore[misc]
                    id = sa.Column(sa.Integer, primary_key=True)

    account = Account(id=3)
    assert repr(account) == f"<Account (transient {id(account)})>"
    with pytest.raises(ValueError, match="several declarative bases"):

        class Both(sa.orm.DeclarativeBase, sa.orm.DeclarativeBaseNoMeta):
            pass

        SQLAlchemy(model_class=Both)


class _Numbers(Pagination):
    def _query_items(self) -> list[int]:
        data = list(range(self._query_args["total"]))
        return data[self._query_offset : self._query_offset + self.per_page]

    def _query_count(self) -> int:
        return int(self._query_args["total"])


def test_pagination_arguments() -> None:
    """Page and size from the query string, the 404s, and the page links."""
    app = Flask(__name__)
    with app.test_request_context("/?page=3&per_page=7"):
        p = _Numbers(total=50)
        assert (p.page, p.per_page, p.first, p.last, p.pages) == (3, 7, 15, 21, 8)
        assert list(p.iter_pages()) == [1, 2, 3, 4, 5, 6, 7, 8]
        assert list(_Numbers(total=500, per_page=10, page=20).iter_pages()) == [
            1, 2, None, 18, 19, 20, 21, 22, 23, 24, None, 49, 50,
        ]  # fmt: skip
        assert _Numbers(total=50, page=1, per_page=500).per_page == 100
        assert _Numbers(total=50, count=False).total is None
    for query in ("page=x", "per_page=x", "page=0", "per_page=-1", "page=99"):
        with app.test_request_context(f"/?{query}"):
            with pytest.raises(NotFound):
                _Numbers(total=5)
            p = _Numbers(total=5, error_out=False)
            assert p.page >= 1 and p.per_page >= 1
    with app.test_request_context("/?page=9"):
        empty = _Numbers(total=0, error_out=False)
        assert (empty.first, empty.last, empty.has_next, list(empty)) == (
            0,
            0,
            False,
            [],
        )


def test_relationships_use_the_query_class(tmp_path: t.Any) -> None:
    """Dynamic relationships and backrefs load with ``db.Query``; ``repr``
    outside a context; a ``UnitOfWork`` app cannot also take compat.
    """
    fsa = SQLAlchemy()
    Model: t.Any = fsa.Model

    class Team(Model):  # type: ignore[misc]
        id = sa.Column(sa.Integer, primary_key=True)

    class Player(Model):  # type: ignore[misc]
        id = sa.Column(sa.Integer, primary_key=True)
        team_id: t.Any = sa.Column(sa.ForeignKey(Team.id))
        team = fsa.relationship(Team, backref=fsa.backref("players", lazy="dynamic"))

    Team.members = fsa.dynamic_loader(Player, viewonly=True)
    Team.others = fsa.relationship(Player, viewonly=True, lazy="dynamic", backref="x")
    assert repr(fsa) == "<SQLAlchemy>"
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    fsa.init_app(app)
    with app.app_context():
        fsa.create_all()
        team = Team(id=1)
        fsa.session.add_all([team, Player(team=team)])
        fsa.session.flush()
        assert isinstance(team.players, fsa.Query)
        assert isinstance(team.members, fsa.Query)
        assert team.players.count() == team.members.count() == 1
    other = Flask(__name__, instance_path=str(tmp_path))
    other.config.update(
        UOW_ENGINES={"default": "sqlite://"}, SQLALCHEMY_DATABASE_URI="sqlite://"
    )
    UnitOfWork(other)
    with pytest.raises(RuntimeError, match="already set up with a 'UnitOfWork'"):
        SQLAlchemy(other)
