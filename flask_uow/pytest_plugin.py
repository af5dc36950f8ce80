"""The pytest plugin of flask_uow, registered through the ``pytest11`` entry
point: installing the package makes its fixtures available.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import pytest
from flask import Flask

from ._query_info import QueryRecord
from .testing import Isolation

QueryAssertion = cabc.Callable[[int], t.ContextManager[list[QueryRecord]]]


def _app(request: pytest.FixtureRequest, fixture: str) -> Flask:
    app = request.getfixturevalue("app")
    if not isinstance(app, Flask):
        raise TypeError(
            f"The {fixture!r} fixture needs an 'app' fixture that returns the"
            f" Flask app, not {type(app).__name__!r}."
        )
    return app


def _uow(request: pytest.FixtureRequest, fixture: str) -> t.Any:
    app = _app(request, fixture)
    uow = app.extensions.get("uow")
    if uow is None:
        raise RuntimeError(
            f"The app {app.name!r} of the 'app' fixture is not set up with"
            f" flask_uow, so {fixture!r} has nothing to count. Call"
            " 'uow.init_app(app)' in the fixture."
        )
    return uow


@pytest.fixture
def uow_isolation(request: pytest.FixtureRequest) -> cabc.Iterator[Isolation]:
    """Isolate the app returned by the test's ``app`` fixture (the one
    pytest-flask's ``client`` uses too): everything the app writes during the test,
    commits included, is rolled back when the test ends, whether it passed,
    failed or errored.

    Request it in a test, or make it apply to every test with an autouse
    fixture in ``conftest.py``::

        @pytest.fixture(autouse=True)
        def _isolated(uow_isolation):
            pass
    """
    with Isolation(_app(request, "uow_isolation")) as isolation:
        yield isolation


@pytest.fixture
def uow_assert_num_queries(request: pytest.FixtureRequest) -> QueryAssertion:
    """:meth:`~flask_uow.UnitOfWork.assert_num_queries` of the extension of
    the test's ``app`` fixture::

        def test_index(client, uow_assert_num_queries):
            with uow_assert_num_queries(2):
                client.get("/")
    """
    return t.cast(
        QueryAssertion, _uow(request, "uow_assert_num_queries").assert_num_queries
    )


@pytest.fixture
def uow_assert_max_queries(request: pytest.FixtureRequest) -> QueryAssertion:
    """:meth:`~flask_uow.UnitOfWork.assert_max_queries` of the extension of
    the test's ``app`` fixture.
    """
    return t.cast(
        QueryAssertion, _uow(request, "uow_assert_max_queries").assert_max_queries
    )
