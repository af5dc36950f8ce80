"""WTForms-SQLAlchemy: a form made with ``model_form(User, db_session=...)``
at import time, with a ``QuerySelectField`` and a validator that query
through the session handed over then, through flask_uow.compat and natively.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import flask
import pytest
import sqlalchemy as sa
from werkzeug.datastructures import MultiDict
from wtforms import ValidationError
from wtforms_sqlalchemy.fields import QuerySelectField
from wtforms_sqlalchemy.orm import model_form

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
    forms: dict[str, t.Any] = {}

    def before_app(session: t.Any, User: type[t.Any], ext: t.Any) -> None:
        base = model_form(User, db_session=session, only=["email", "name"])

        class UserForm(base):  # type: ignore[misc,valid-type]
            # Any existing user, as a "referred by" choice.
            referrer = QuerySelectField(
                query_factory=lambda: session.query(User).order_by(User.id),
                get_label="email",
                allow_blank=True,
            )

            def validate_email(self, field: t.Any) -> None:
                if session.query(User).filter_by(email=field.data).first():
                    raise ValidationError("This email is taken.")

        forms["user"] = UserForm

    s = make_setup(request.param, db_url, tmp_path, "wtf", before_app=before_app)

    @s.app.post("/users")
    def create() -> t.Any:
        form = forms["user"](MultiDict(flask.request.form))
        if not form.validate():
            return form.errors, 422
        user = s.User()
        form.populate_obj(user)
        s.session.add(user)
        if user.name == "boom":
            raise RuntimeError("after the write")
        referrer = form.referrer.data
        return {"referrer": referrer.email if referrer else None}

    yield s
    drop(s)


def test_form_creates_row(setup: Setup, db: Database) -> None:
    """A valid form is committed by the request; the select field lists it."""
    client = setup.app.test_client()
    first = client.post("/users", data={"email": "a@example.com", "name": "a"})
    assert first.status_code == 200, first.get_json()
    with setup.app.app_context():
        ref = setup.session.execute(sa.select(setup.User.id)).scalar_one()
    second = client.post(
        "/users", data={"email": "b@example.com", "name": "b", "referrer": str(ref)}
    )
    assert second.get_json() == {"referrer": "a@example.com"}
    assert emails(db.engine, setup) == ["a@example.com", "b@example.com"]


def test_failures_leave_nothing(setup: Setup, db: Database) -> None:
    """The email validator refuses a taken email; a view that fails after
    its write is rolled back.
    """
    setup.app.testing = False
    client = setup.app.test_client()
    first = client.post("/users", data={"email": "a@example.com", "name": "a"})
    assert first.status_code == 200
    taken = client.post("/users", data={"email": "a@example.com", "name": "x"})
    assert taken.status_code == 422
    assert "email" in taken.get_json()
    boom = client.post("/users", data={"email": "c@example.com", "name": "boom"})
    assert boom.status_code == 500
    assert emails(db.engine, setup) == ["a@example.com"]
