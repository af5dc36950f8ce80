"""The Flask and SQLAlchemy behaviour flask_uow relies on; these fail loudly if
they change."""

from __future__ import annotations

import pathlib
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask import request
from flask import request_started
from flask import Response
from flask.globals import _cv_request

from flask_uow._bridge import savepoint_name


def make_app() -> Flask:
    return Flask("contract", root_path=str(pathlib.Path.cwd()))


def test_request_context_variable_names_the_app_and_request() -> None:
    """flask_uow finds the app of the current request through _cv_request."""
    app = make_app()
    seen: list[bool] = []

    @app.get("/")
    def index() -> str:
        ctx = _cv_request.get(None)
        seen.append(ctx is not None and ctx.app is app)
        seen.append(ctx is not None and ctx.request is request._get_current_object())  # type: ignore[attr-defined]
        return ""

    app.test_client().get("/")
    assert seen == [True, True]
    assert _cv_request.get(None) is None


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


def test_request_started_comes_first_in_a_handled_request_only() -> None:
    """request_started is sent by the handling app, with its request context
    pushed, before any url_value_preprocessor or before_request function, and
    not for a request context that is only pushed; flask_uow marks a request
    as handled there.
    """
    app = make_app()
    seen: list[str] = []

    def started(sender: Flask, **extra: t.Any) -> None:
        ctx = _cv_request.get(None)
        seen.append(f"started {sender is app and ctx is not None and ctx.app is app}")

    app.url_value_preprocessor(lambda endpoint, values: seen.append("preprocessor"))
    app.before_request(lambda: seen.append("before_request"))
    app.get("/")(lambda: "")
    request_started.connect(started, app)
    try:
        with app.test_request_context():
            pass
        app.test_client().get("/")
    finally:
        request_started.disconnect(started, app)
    assert seen == ["started True", "preprocessor", "before_request"]
