"""factory_boy's SQLAlchemyModelFactory with the session handed to its Meta at
import time, through flask_uow.compat and natively, in both persistence modes,
inside and outside ``uow_isolation``.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import typing as t

import factory
import pytest

from flask_uow import Isolation

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
    s = make_setup(request.param, db_url, tmp_path, "factory")
    yield s
    drop(s)


def user_factory(setup: Setup, persistence: str) -> t.Any:
    class UserFactory(factory.alchemy.SQLAlchemyModelFactory):
        class Meta:
            model = setup.User
            sqlalchemy_session = setup.session
            sqlalchemy_session_persistence = persistence

        email = factory.Sequence(  # type: ignore[attr-defined,no-untyped-call]
            lambda n: f"user{n}@example.com"
        )
        name = "made"

    return UserFactory


@pytest.mark.parametrize("persistence", ["commit", "flush"])
def test_factory_rows_are_seen_by_requests(
    setup: Setup, db: Database, persistence: str
) -> None:
    """A row the factory made in the test body is seen by a request."""
    UserFactory = user_factory(setup, persistence)

    @setup.app.get("/count")
    def count() -> str:
        return str(setup.session.query(setup.User).count())

    with setup.app.app_context():
        UserFactory()
        setup.session.commit()
    assert setup.app.test_client().get("/count").text == "1"
    assert len(emails(db.engine, setup)) == 1


@pytest.mark.parametrize("persistence", ["commit", "flush"])
def test_factory_rows_are_rolled_back_by_isolation(
    setup: Setup, db: Database, persistence: str
) -> None:
    """Under test isolation the factory's rows, committed or not, are gone after."""
    UserFactory = user_factory(setup, persistence)
    with Isolation(setup.app):
        with setup.app.app_context():
            UserFactory()
            UserFactory()
            assert setup.session.query(setup.User).count() == 2
    assert emails(db.engine, setup) == []
