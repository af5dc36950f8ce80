"""Flask-Login with its documented Flask-SQLAlchemy setup, through
flask_uow.compat and natively: the user loader reads through the session
handed over at setup time, and a logged-in user's change is committed.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import flask
import flask_login
import pytest

from flask_uow import UnitOfWork

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
    manager = flask_login.LoginManager()

    def before_app(session: t.Any, User: type[t.Any], ext: t.Any) -> None:
        User.is_authenticated = True  # The UserMixin attributes Flask-Login reads.
        User.is_anonymous = False
        User.is_active = True
        User.get_id = lambda self: str(self.id)

        @manager.user_loader  # type: ignore[untyped-decorator]
        def load_user(user_id: str) -> t.Any:
            return session.get(User, int(user_id))

    s = make_setup(request.param, db_url, tmp_path, "login", before_app=before_app)
    manager.init_app(s.app)
    session = s.session

    @s.app.post("/login/<int:user_id>")
    def login(user_id: int) -> str:
        flask_login.login_user(session.get(s.User, user_id))
        return "in"

    @s.app.post("/rename/<name>")
    @flask_login.login_required  # type: ignore[untyped-decorator]
    def rename(name: str) -> str:
        flask_login.current_user.name = name
        session.commit()
        if name == "boom":
            raise RuntimeError("after the commit")
        return "renamed"

    @s.app.post("/signup/<email>")
    def signup(email: str) -> str:
        user = s.User(email=email, name="new")
        session.add(user)
        session.flush()
        flask_login.login_user(user)
        if email.startswith("fail"):
            raise RuntimeError("the request fails")
        session.commit()
        return "ok"

    with s.app.app_context():
        s.session.add(s.User(email="ann@example.com", name="ann"))
        s.session.commit()
    yield s
    drop(s)


def test_logged_in_user_is_loaded_and_changed(setup: Setup, db: Database) -> None:
    """The loader finds the user in a later request; its change is committed."""
    client = setup.app.test_client()
    assert client.post("/login/1").status_code == 200
    assert client.post("/rename/annie").status_code == 200
    assert db.scalar(f"SELECT name FROM {setup.User.__tablename__}") == "annie"


def test_failed_signup_leaves_nothing(setup: Setup, db: Database) -> None:
    """A request that fails after adding and logging in a user writes nothing."""
    setup.app.config["PROPAGATE_EXCEPTIONS"] = False
    client = setup.app.test_client()
    assert client.post("/signup/fail@example.com").status_code == 500
    assert client.post("/signup/bob@example.com").status_code == 200
    assert emails(db.engine, setup) == ["ann@example.com", "bob@example.com"]


def test_user_changed_in_a_later_request_of_one_context(
    setup: Setup, db: Database
) -> None:
    """With one request context pushed for the whole test, as pytest-flask
    does, a later request changes the user it loaded itself, not the one
    Flask-Login cached in ``g`` during the earlier request's unit of work.
    compat drops the cached user itself; natively, the app does it as
    docs/migrating.rst shows.
    """
    if isinstance(setup.ext, UnitOfWork):

        @setup.app.teardown_request
        def forget_login_user(exc: BaseException | None) -> None:
            flask.g.pop("_login_user", None)

    client = setup.app.test_client()
    with setup.app.test_request_context():
        assert client.post("/login/1").status_code == 200
        assert client.post("/rename/annie").status_code == 200
    assert db.scalar(f"SELECT name FROM {setup.User.__tablename__}") == "annie"
