import os

import pytest

from notes import create_app
from notes.models import db


@pytest.fixture
def app():
    # Flask-SQLAlchemy's usual test setting; NOTES_TEST_DATABASE_URL runs the
    # suite on another database.
    url = os.environ.get("NOTES_TEST_DATABASE_URL", "sqlite://")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.drop_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def alice(client):
    client.post("/register", data={"username": "alice", "password": "a"})
    client.post("/login", data={"username": "alice", "password": "a"})
    return client
