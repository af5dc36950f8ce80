"""The pytest plugin of flask_uow, registered through the ``pytest11`` entry
point: installing the package makes its fixtures available.
"""

from __future__ import annotations

import collections.abc as cabc

import pytest
from flask import Flask

from .testing import Isolation


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
    app = request.getfixturevalue("app")
    if not isinstance(app, Flask):
        raise TypeError(
            "The 'uow_isolation' fixture needs an 'app' fixture that returns the"
            f" Flask app, not {type(app).__name__!r}."
        )
    with Isolation(app) as isolation:
        yield isolation
