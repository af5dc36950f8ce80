import os
from datetime import datetime
from datetime import timezone

import pytest

from flaskr import create_app
from flaskr import init_db
from flaskr import uow
from flaskr.models import Post
from flaskr.models import User


@pytest.fixture
def app(tmp_path):
    # FLASKR_TEST_DATABASE_URL runs the suite on another database.
    default = f"sqlite:///{tmp_path / 'flaskr.sqlite'}"
    url = os.environ.get("FLASKR_TEST_DATABASE_URL", default)
    # Flask-SQLAlchemy: "SQLALCHEMY_DATABASE_URI": url
    app = create_app({"TESTING": True, "UOW_ENGINES": {"default": url}})

    with app.app_context():
        init_db()
        user = User(username="test")
        user.set_password("test")
        other = User(username="other")
        other.set_password("other")
        created = datetime(2018, 1, 1, tzinfo=timezone.utc)
        post = Post(title="test title", body="test\nbody", author=user, created=created)
        uow.session.add_all((user, other, post))
        uow.session.commit()

    yield app


if os.environ.get("FLASKR_TEST_ISOLATION"):

    @pytest.fixture(autouse=True)
    def _isolated(uow_isolation):
        """Every test's writes are rolled back (flask_uow's fixture)."""


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class AuthActions:
    def __init__(self, client):
        self._client = client

    def login(self, username="test", password="test"):
        return self._client.post(
            "/auth/login", data={"username": username, "password": password}
        )

    def logout(self):
        return self._client.get("/auth/logout")


@pytest.fixture
def auth(client):
    return AuthActions(client)
