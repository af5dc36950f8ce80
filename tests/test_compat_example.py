"""examples/notes, an app written for Flask-SQLAlchemy and switched to
flask_uow by its import line only, passes its own tests with pytest-flask
(which keeps one application context across each test's requests), on
in-memory SQLite (its own test setting) and on PostgreSQL.
"""

from __future__ import annotations

import os
import pathlib

import pytest

NOTES = pathlib.Path(__file__).parent.parent / "examples" / "notes"


@pytest.mark.parametrize("database", ["memory", "postgresql"])
def test_notes_suite(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """The example's 7 tests pass, in random order."""
    if database == "postgresql":
        url = request.getfixturevalue("postgresql_database")
        monkeypatch.setenv("NOTES_TEST_DATABASE_URL", url)
    else:
        monkeypatch.delenv("NOTES_TEST_DATABASE_URL", raising=False)
    path = [str(NOTES), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    ini = pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        str(NOTES / "tests"),
        "-c",
        str(ini),
        "--rootdir",
        str(pytester.path),
        "--confcutdir",
        str(NOTES),
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=7)
