"""Flask-Admin: a ``ModelView`` given the session at setup time, through
flask_uow.compat and natively. Flask-Admin checks that it is handed a
SQLAlchemy session or ``scoped_session``.

Flask-Admin 2.2 deprecates passing the session in favour of passing
Flask-SQLAlchemy's ``db``, which it recognizes by its class only; a
compat ``db`` is not that class, so the session is what both ways pass.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib

import pytest
from flask_admin import Admin
from flask_admin.contrib.sqla import ModelView

from .conftest import Database
from .extension_apps import drop
from .extension_apps import emails
from .extension_apps import make_setup
from .extension_apps import MODES
from .extension_apps import Setup

pytestmark = pytest.mark.filterwarnings(
    "ignore:Passing a session object directly is deprecated:DeprecationWarning"
)


@pytest.fixture(params=MODES)
def setup(
    request: pytest.FixtureRequest, db_url: str, tmp_path: pathlib.Path
) -> cabc.Iterator[Setup]:
    admin = Admin(name="test")

    def before_app(session: object, User: type[object], ext: object) -> None:
        admin.add_view(ModelView(User, session, endpoint="users"))

    s = make_setup(request.param, db_url, tmp_path, "admin", before_app=before_app)
    admin.init_app(s.app)
    yield s
    drop(s)


def test_create_through_admin(setup: Setup, db: Database) -> None:
    """The admin's create form writes a committed row, listed afterwards."""
    client = setup.app.test_client()
    form = {"email": "a@example.com", "name": "a", "active": "y"}
    response = client.post("/admin/users/new/", data=form)
    assert response.status_code == 302
    assert emails(db.engine, setup) == ["a@example.com"]
    assert b"a@example.com" in client.get("/admin/users/").data


def test_invalid_form_leaves_nothing(setup: Setup, db: Database) -> None:
    """A form the admin refuses (a duplicate email) writes nothing more."""
    client = setup.app.test_client()
    form = {"email": "a@example.com", "name": "a", "active": "y"}
    assert client.post("/admin/users/new/", data=form).status_code == 302
    again = client.post("/admin/users/new/", data={**form, "name": "b"})
    assert again.status_code == 200  # The form again, with the error.
    assert emails(db.engine, setup) == ["a@example.com"]
