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

from flask_uow.compat import SQLAlchemy
from flask_uow.compat.cli import add_models_to_shell
from flask_uow.compat.model import camel_to_snake_case
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
