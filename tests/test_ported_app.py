"""Flask-SQLAlchemy's flaskr example, ported by following docs/migrating.rst
(examples/flaskr), passes its own test suite with pytest-flask, on both
backends, with and without flask_uow's test isolation.
"""

from __future__ import annotations

import os
import pathlib

import pytest
import sqlalchemy as sa

from .conftest import Database

FLASKR = pathlib.Path(__file__).parent.parent / "examples" / "flaskr"


@pytest.mark.parametrize("isolation", ["", "1"], ids=["committing", "isolated"])
def test_ported_flaskr_suite(
    pytester: pytest.Pytester,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    isolation: str,
) -> None:
    """The ported app's 23 tests pass, in random order."""
    monkeypatch.setenv("FLASKR_TEST_DATABASE_URL", db.url)
    monkeypatch.setenv("FLASKR_TEST_ISOLATION", isolation)
    path = [str(FLASKR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    ini = pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        str(FLASKR / "tests"),
        "-c",
        str(ini),
        "--rootdir",
        str(pytester.path),
        "--confcutdir",
        str(FLASKR),
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=23)
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE post"))
        conn.execute(sa.text('DROP TABLE "user"'))
