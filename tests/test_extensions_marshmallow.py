"""flask-marshmallow with marshmallow-sqlalchemy: an SQLAlchemyAutoSchema with
``load_instance=True`` and the session handed to its Meta at import time,
through flask_uow.compat and natively.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import flask
import marshmallow
import pytest
from flask_marshmallow import Marshmallow

from .conftest import Database
from .extension_apps import drop
from .extension_apps import emails
from .extension_apps import make_setup
from .extension_apps import MODES
from .extension_apps import Setup


@pytest.fixture(params=MODES)
def setup(
    request: pytest.FixtureRequest, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[Setup]:
    ma = Marshmallow()
    schemas: dict[str, t.Any] = {}

    def before_app(session: t.Any, User: type[t.Any], ext: t.Any) -> None:
        class UserSchema(ma.SQLAlchemyAutoSchema):  # type: ignore[name-defined,misc]
            class Meta:
                model = User
                load_instance = True
                sqla_session = session

        schemas["user"] = UserSchema()

    s = make_setup(request.param, db_url, tmp_path, "marsh", before_app=before_app)
    ma.init_app(s.app)  # After the database extension, as its docs say.
    schema = schemas["user"]

    @s.app.post("/users")
    def create() -> tuple[t.Any, int]:
        try:
            user = schema.load(flask.request.get_json())
        except marshmallow.ValidationError as e:
            return e.messages, 422
        s.session.add(user)
        s.session.commit()
        return schema.dump(user), 201

    @s.app.get("/users/<int:user_id>")
    def show(user_id: int) -> t.Any:
        return schema.dump(s.session.get(s.User, user_id))

    yield s
    drop(s)


def test_load_instance_creates_row(setup: Setup, db: Database) -> None:
    """A posted JSON body becomes a committed row; it is dumped back."""
    client = setup.app.test_client()
    response = client.post("/users", json={"email": "a@example.com", "name": "a"})
    assert response.status_code == 201
    created = response.get_json()
    shown = client.get(f"/users/{created['id']}").get_json()
    assert shown["email"] == "a@example.com"
    assert emails(db.engine, setup) == ["a@example.com"]


def test_invalid_body_leaves_nothing(setup: Setup, db: Database) -> None:
    """A body that fails validation is refused and writes nothing."""
    client = setup.app.test_client()
    response = client.post("/users", json={"email": 5})
    assert response.status_code == 422
    assert emails(db.engine, setup) == []
