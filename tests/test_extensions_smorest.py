# mypy: disable-error-code="untyped-decorator,type-arg"
"""Flask-Smorest: a blueprint whose arguments are loaded by a
marshmallow-sqlalchemy schema with ``load_instance=True`` and the session
handed over at import time, through flask_uow.compat and natively.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
from flask_smorest import abort
from flask_smorest import Api
from flask_smorest import Blueprint
from marshmallow_sqlalchemy import SQLAlchemyAutoSchema

from .conftest import Database
from .extension_apps import drop
from .extension_apps import emails
from .extension_apps import make_setup
from .extension_apps import MODES
from .extension_apps import Setup

CONFIG = {"API_TITLE": "t", "API_VERSION": "1", "OPENAPI_VERSION": "3.0.2"}


@pytest.fixture(params=MODES)
def setup(
    request: pytest.FixtureRequest, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[Setup]:
    blp = Blueprint("users", __name__, url_prefix="/users")
    holder: dict[str, t.Any] = {}

    def before_app(session: t.Any, User: type[t.Any], ext: t.Any) -> None:
        class UserSchema(SQLAlchemyAutoSchema):
            class Meta:
                model = User
                load_instance = True
                sqla_session = session

        @blp.route("/", methods=["POST"])
        @blp.arguments(UserSchema)
        @blp.response(201, UserSchema)
        def create(user: t.Any) -> t.Any:
            session.add(user)
            session.flush()
            if user.name == "conflict":
                abort(409, message="refused after the write")
            return user

    s = make_setup(
        request.param, db_url, tmp_path, "smorest", before_app=before_app, config=CONFIG
    )
    Api(s.app).register_blueprint(blp)
    holder["setup"] = s
    yield s
    drop(s)


def test_post_creates_row(setup: Setup, db: Database) -> None:
    client = setup.app.test_client()
    response = client.post("/users/", json={"email": "a@example.com", "name": "a"})
    assert response.status_code == 201
    assert response.get_json()["id"] >= 1
    assert emails(db.engine, setup) == ["a@example.com"]


def test_refusals_leave_nothing(setup: Setup, db: Database) -> None:
    client = setup.app.test_client()
    assert client.post("/users/", json={"email": 5}).status_code == 422
    conflict = client.post(
        "/users/", json={"email": "c@example.com", "name": "conflict"}
    )
    assert conflict.status_code == 409
    assert emails(db.engine, setup) == []
