"""examples/notes, an app written for Flask-SQLAlchemy and switched to
flask_uow by its import line only, passes its own tests on both backends.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from .conftest import Database

NOTES = pathlib.Path(__file__).parent.parent / "examples" / "notes"


def test_notes_suite(
    pytester: pytest.Pytester, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's 7 tests pass, in random order, with pytest-flask (which
    keeps one application context across each test's requests).
    """
    monkeypatch.setenv("NOTES_TEST_DATABASE_URL", db.url)
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


def test_notes_suite_in_memory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And on in-memory SQLite, Flask-SQLAlchemy's usual test setting."""
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
