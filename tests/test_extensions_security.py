# mypy: disable-error-code="assignment,var-annotated"
"""Flask-Security-Too, registering and logging in through its JSON API:
its documented Flask-SQLAlchemy setup, ``SQLAlchemyUserDatastore(db, ...)``,
through flask_uow.compat, and ``SQLAlchemySessionUserDatastore`` given
``uow.session`` at import time natively.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import pytest
import sqlalchemy as sa
from flask_security import RoleMixin
from flask_security import Security
from flask_security import SQLAlchemySessionUserDatastore
from flask_security import SQLAlchemyUserDatastore
from flask_security import UserMixin

from .conftest import Database
from .extension_apps import drop
from .extension_apps import make_setup
from .extension_apps import MODES
from .extension_apps import Setup

CONFIG = {
    "SECURITY_PASSWORD_SALT": "salt",
    "SECURITY_REGISTERABLE": True,
    "SECURITY_SEND_REGISTER_EMAIL": False,
    "SECURITY_EMAIL_VALIDATOR_ARGS": {"check_deliverability": False},
    "WTF_CSRF_ENABLED": False,
    "SECURITY_PASSWORD_HASH": "pbkdf2_sha512",
}


def security_models(base: t.Any, User: type[t.Any]) -> dict[str, type[t.Any]]:
    """A role and a user model as Flask-Security's documentation declares them."""
    Model: t.Any = getattr(base, "Model", base)
    roles_users = sa.Table(
        "sec_roles_users",
        Model.metadata,
        sa.Column("user_id", sa.ForeignKey("sec_user.id")),
        sa.Column("role_id", sa.ForeignKey("sec_role.id")),
    )

    class Role(Model, RoleMixin):  # type: ignore[misc]
        __tablename__ = "sec_role"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(80), unique=True)
        description = sa.Column(sa.String(255))

    class SecUser(Model, UserMixin):  # type: ignore[misc]
        __tablename__ = "sec_user"
        id = sa.Column(sa.Integer, primary_key=True)
        email = sa.Column(sa.String(255), unique=True)
        password = sa.Column(sa.String(255), nullable=False)
        active = sa.Column(sa.Boolean())
        fs_uniquifier = sa.Column(sa.String(64), unique=True, nullable=False)
        confirmed_at = sa.Column(sa.DateTime())
        roles = sa.orm.relationship(Role, secondary=roles_users, backref="users")

    return {"Role": Role, "User": SecUser}


def registered(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT email FROM sec_user")).scalars())


@pytest.fixture(params=MODES)
def setup(
    request: pytest.FixtureRequest, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[Setup]:
    held: dict[str, t.Any] = {}

    def before_app(session: t.Any, User: type[t.Any], ext: t.Any) -> None:
        models = held["models"]
        if request.param == "compat":
            # Flask-Security's documented Flask-SQLAlchemy setup.
            held["datastore"] = SQLAlchemyUserDatastore(
                ext, models["User"], models["Role"]
            )
        else:
            held["datastore"] = SQLAlchemySessionUserDatastore(
                session, models["User"], models["Role"]
            )

    def more_models(base: t.Any, User: type[t.Any]) -> dict[str, type[t.Any]]:
        held["models"] = security_models(base, User)
        return t.cast("dict[str, type[t.Any]]", held["models"])

    s = make_setup(
        request.param,
        db_url,
        tmp_path,
        "fsec",
        before_app=before_app,
        more_models=more_models,
        config=CONFIG,
    )
    Security(s.app, held["datastore"])
    yield s
    drop(s)


def test_register_and_login(setup: Setup, db: Database) -> None:
    """Registering commits the user; logging in finds it."""
    client = setup.app.test_client()
    body = {"email": "a@mail.org", "password": "a long password 1"}
    response = client.post(
        "/register", json={**body, "password_confirm": body["password"]}
    )
    assert response.status_code == 200, response.get_json()
    assert registered(db.engine) == ["a@mail.org"]
    client.post("/logout")
    assert client.post("/login", json=body).status_code == 200


def test_refused_registration_leaves_nothing(setup: Setup, db: Database) -> None:
    """A password that is too short, or a taken email, writes nothing."""
    client = setup.app.test_client()
    short = {"email": "b@mail.org", "password": "x", "password_confirm": "x"}
    assert client.post("/register", json=short).status_code == 400
    password = "a long password 1"
    body = {"email": "a@mail.org", "password": password, "password_confirm": password}
    assert client.post("/register", json=body).status_code == 200
    client.post("/logout")
    assert client.post("/register", json=body).status_code == 400
    assert registered(db.engine) == ["a@mail.org"]
