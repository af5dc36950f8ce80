"""The Flask and SQLAlchemy behaviour flask_uow relies on; these fail loudly if
they change."""

from __future__ import annotations

import pathlib
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask import request
from flask import Response

from flask_uow._bridge import savepoint_name
from flask_uow._state import app_context
from flask_uow._state import request_context


def make_app() -> Flask:
    return Flask("contract", root_path=str(pathlib.Path.cwd()))


def test_request_context_variable_names_the_app_and_request() -> None:
    """flask_uow finds the app of the current request through _cv_request."""
    app = make_app()
    seen: list[bool] = []

    @app.get("/")
    def index() -> str:
        ctx = request_context()
        seen.append(ctx is not None and ctx.app is app)
        seen.append(ctx is not None and ctx.request is request._get_current_object())  # type: ignore[attr-defined]
        return ""

    app.test_client().get("/")
    assert seen == [True, True]
    assert request_context() is None


def test_handle_user_exception_sees_handled_exceptions() -> None:
    """Every exception from a view reaches app.handle_user_exception, even one
    an errorhandler handles; flask_uow notices failures there.
    """
    app = make_app()
    seen: list[Exception] = []
    original = app.handle_user_exception

    def spy(e: Exception) -> t.Any:
        seen.append(e)
        return original(e)

    app.handle_user_exception = spy  # type: ignore[method-assign]

    @app.errorhandler(ValueError)
    def handled(e: ValueError) -> tuple[str, int]:
        return "handled", 302

    @app.get("/")
    def index() -> str:
        raise ValueError("x")

    assert app.test_client().get("/").status_code == 302
    assert [type(e) for e in seen] == [ValueError]


def test_sqlalchemy_savepoint_name_is_readable(tmp_path: pathlib.Path) -> None:
    """flask_uow reads a savepoint's name from the connection's nested
    transaction, to roll back to it after its RELEASE failed.
    """
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'contract.db'}")
    with engine.connect() as connection:
        connection.begin()
        connection.begin_nested()
        assert savepoint_name(connection).startswith("sa_savepoint_")
        connection.exec_driver_sql(
            f"ROLLBACK TO SAVEPOINT {savepoint_name(connection)}"
        )
    engine.dispose()


def test_process_response_sees_the_final_response_of_each_finalization() -> None:
    """app.process_response runs every after_request function and returns the
    response the app sends; when one of them raises, Flask calls it again for
    the error response. flask_uow decides there how a streamed unit ends.
    """
    app = make_app()
    seen: list[int] = []
    original = app.process_response

    def spy(response: Response) -> Response:
        response = original(response)
        seen.append(response.status_code)
        return response

    app.process_response = spy  # type: ignore[method-assign]

    @app.after_request
    def last(response: Response) -> Response:
        if response.status_code == 201:
            raise RuntimeError("x")
        return response

    @app.after_request
    def replace(response: Response) -> Response:
        if response.status_code != 200:
            return response
        return Response("replaced", 201 if request.path == "/fail" else 202)

    @app.get("/<path:name>")
    def index(name: str) -> str:
        return ""

    client = app.test_client()
    assert client.get("/ok").status_code == 202
    assert client.get("/fail").status_code == 500
    assert seen == [202, 500]


def test_wsgi_app_is_called_for_every_handled_request_only() -> None:
    """Flask calls the app's wsgi_app attribute for every request it handles
    (the documented place for middleware), with the request context not yet
    pushed, and not for a request context that is only pushed; flask_uow marks
    a request as handled there, and ends its unit when it returns.
    """
    app = make_app()
    seen: list[str] = []
    original = app.wsgi_app

    def wrapper(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        seen.append(f"wsgi_app {request_context() is None}")
        try:
            return original(environ, start_response)
        finally:
            seen.append(f"returned {request_context() is None}")

    app.wsgi_app = wrapper  # type: ignore[method-assign]
    app.before_request(lambda: seen.append("before_request"))
    app.teardown_request(lambda exc: seen.append("teardown_request"))
    app.get("/")(lambda: "")
    with app.test_request_context():
        pass
    app.test_client().get("/")
    assert seen == [
        "teardown_request",  # The pushed context: torn down, never handled.
        "wsgi_app True",
        "before_request",
        "teardown_request",
        "returned True",
    ]


def test_app_context_variable_names_the_app() -> None:
    """flask_uow finds the current app through Flask's application context
    variable, with or without a request.
    """
    app = make_app()
    with app.app_context():
        ctx = app_context()
        assert ctx is not None and ctx.app is app
        assert ctx.g is app_context().g  # type: ignore[union-attr]
    assert app_context() is None
