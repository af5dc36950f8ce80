"""What happens to a request's work: committed before the response leaves, or
rolled back.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import abort
from flask import Flask
from flask import redirect
from flask import Response
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response as BaseResponse

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .conftest import Database
from .models import Item
from .models import tags


def add_item_view(app: Flask, uow: UnitOfWork) -> None:
    @app.post("/items/<name>")
    def add_item(name: str) -> tuple[str, int]:
        uow.session.add(Item(name=name))
        return name, 201


def test_commit_happens_before_the_response_reaches_the_server(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """The row is visible to another connection when start_response is called."""
    add_item_view(flask_app, uow)
    seen: list[list[str]] = []

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        seen.append(db.names())
        return lambda data: None

    environ = EnvironBuilder(path="/items/a", method="POST").get_environ()
    body = flask_app(environ, start_response)
    try:
        assert b"".join(body) == b"a"
    finally:
        body.close()  # type: ignore[attr-defined]
    assert seen == [["a"]]


def test_redirect_commits(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """A 3xx response commits."""

    @flask_app.post("/go")
    def go() -> BaseResponse:
        uow.session.add(Item(name="r"))
        return redirect("/elsewhere")

    assert flask_app.test_client().post("/go").status_code == 302
    assert db.names() == ["r"]


def test_exception_in_view_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An unhandled exception gives a 500 and nothing is committed."""

    @flask_app.post("/boom")
    def boom() -> str:
        uow.session.add(Item(name="x"))
        uow.session.flush()
        raise ValueError("boom")

    assert flask_app.test_client().post("/boom").status_code == 500
    assert db.names() == []


class ValidationError(Exception):
    pass


def test_handled_exception_rolls_back_even_when_redirected(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An exception an errorhandler turns into a redirect still rolls back."""

    @flask_app.errorhandler(ValidationError)
    def invalid(e: ValidationError) -> BaseResponse:
        return redirect("/form")

    @flask_app.post("/form")
    def form() -> str:
        uow.session.add(Item(name="half"))
        uow.session.flush()
        raise ValidationError()

    response = flask_app.test_client().post("/form")
    assert response.status_code == 302
    assert db.names() == []


def test_exception_in_before_request_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A handled exception in a before_request hook rolls back its writes."""

    @flask_app.before_request
    def load_user() -> None:
        uow.session.add(Item(name="visit"))
        raise ValidationError()

    @flask_app.errorhandler(ValidationError)
    def invalid(e: ValidationError) -> tuple[str, int]:
        return "handled", 200

    add_item_view(flask_app, uow)
    response = flask_app.test_client().post("/items/a")
    assert response.get_data(as_text=True) == "handled"
    assert db.names() == []


def test_exception_in_after_request_hook_rolls_back(
    make_app: AppFactory, uow: UnitOfWork, db: Database
) -> None:
    """A failing after_request hook rolls back, even if the veto would commit."""
    app = make_app()
    add_item_view(app, uow)
    uow.commit_veto(lambda response: False)

    @app.after_request
    def broken(response: Response) -> Response:
        raise RuntimeError("hook failed")

    assert app.test_client().post("/items/a").status_code == 500
    assert db.names() == []


@pytest.mark.parametrize("status", [400, 403, 404, 409, 500, 503])
def test_abort_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database, status: int
) -> None:
    """abort(4xx/5xx) rolls back the work done before it."""

    @flask_app.post("/abort")
    def view() -> str:
        uow.session.add(Item(name="x"))
        abort(status)

    assert flask_app.test_client().post("/abort").status_code == status
    assert db.names() == []


def test_error_status_without_exception_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A returned 4xx response is vetoed by default."""

    @flask_app.post("/bad")
    def bad() -> tuple[str, int]:
        uow.session.add(Item(name="x"))
        return "no", 422

    assert flask_app.test_client().post("/bad").status_code == 422
    assert db.names() == []


def test_custom_veto_replaces_the_default(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A registered veto decides alone: here 404 commits, a header vetoes."""

    @uow.commit_veto
    def veto(response: Response) -> bool:
        return response.headers.get("X-Dry-Run") == "1"

    @flask_app.post("/<name>/<int:status>")
    def view(name: str, status: int) -> tuple[str, int, dict[str, str]]:
        uow.session.add(Item(name=name))
        return "", status, {"X-Dry-Run": "1" if name == "dry" else "0"}

    client = flask_app.test_client()
    assert client.post("/kept/404").status_code == 404
    assert client.post("/dry/200").status_code == 200
    assert db.names() == ["kept"]


def test_no_autocommit_view_rolls_back(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A view marked no_autocommit is rolled back; others still commit."""

    @flask_app.post("/preview")
    @uow.no_autocommit
    def preview() -> str:
        uow.session.add(Item(name="preview"))
        uow.session.flush()
        return "ok"

    add_item_view(flask_app, uow)
    client = flask_app.test_client()
    assert client.post("/preview").status_code == 200
    assert client.post("/items/real").status_code == 201
    assert db.names() == ["real"]


def test_mark_rollback_only(flask_app: Flask, uow: UnitOfWork, db: Database) -> None:
    """mark_rollback_only() rolls back a successful request."""

    @flask_app.post("/dry-run")
    def dry_run() -> str:
        uow.session.add(Item(name="x"))
        uow.mark_rollback_only()
        return "ok"

    assert flask_app.test_client().post("/dry-run").status_code == 200
    assert db.names() == []


def test_autocommit_off(make_app: AppFactory, uow: UnitOfWork, db: Database) -> None:
    """With UOW_AUTOCOMMIT False only explicit commits are kept."""
    app = make_app(UOW_AUTOCOMMIT=False)
    add_item_view(app, uow)

    @app.post("/explicit")
    def explicit() -> str:
        uow.session.add(Item(name="explicit"))
        uow.session.commit()
        return "ok"

    client = app.test_client()
    assert client.post("/items/implicit").status_code == 201
    assert client.post("/explicit").status_code == 200
    assert db.names() == ["explicit"]


def test_failed_commit_uses_the_apps_error_handler(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A UNIQUE violation found by the final flush becomes the handler's 409;
    the view's 201 is never sent, and the next request starts clean.
    """

    @flask_app.errorhandler(sa_exc.IntegrityError)
    def conflict(e: sa_exc.IntegrityError) -> tuple[str, int]:
        return "conflict", 409

    add_item_view(flask_app, uow)
    client = flask_app.test_client()
    assert client.post("/items/dup").status_code == 201
    response = client.post("/items/dup")
    assert (response.status_code, response.get_data(as_text=True)) == (409, "conflict")
    assert client.post("/items/next").status_code == 201
    assert db.names() == ["dup", "next"]


def test_failed_commit_without_handler_is_500(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """With no handler for the commit error the client gets a 500."""
    add_item_view(flask_app, uow)
    client = flask_app.test_client()
    assert client.post("/items/dup").status_code == 201
    response = client.post("/items/dup")
    assert response.status_code == 500
    assert b"dup" not in response.data
    assert db.names() == ["dup"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_deferred_constraint_fails_at_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A deferred constraint, checked only by COMMIT itself, gives the 409."""

    @flask_app.errorhandler(sa_exc.IntegrityError)
    def conflict(e: sa_exc.IntegrityError) -> tuple[str, int]:
        return "conflict", 409

    @flask_app.post("/tags")
    def add_tags() -> tuple[str, int]:
        uow.session.execute(sa.insert(tags), [{"name": "t"}, {"name": "t"}])
        return "created", 201

    response = flask_app.test_client().post("/tags")
    assert (response.status_code, response.get_data(as_text=True)) == (409, "conflict")
    assert db.names("tags") == []
