"""The example app's own test suite passes on PostgreSQL too."""

from __future__ import annotations

import pathlib

import pytest
import sqlalchemy as sa

from example_app.models import Base

from .conftest import Database

EXAMPLE_TESTS = pathlib.Path(__file__).parent.parent / "example_app" / "tests"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_example_suite_on_postgresql(
    pytester: pytest.Pytester, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run example_app/tests against PostgreSQL; it leaves no row behind."""
    monkeypatch.setenv("LEDGER_TEST_DATABASE_URL", db.url)
    # A configuration of its own, as in a user's project: the plugin comes
    # from the installed entry point, and this repository's options are out.
    ini = pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        str(EXAMPLE_TESTS),
        "-c",
        str(ini),
        "--rootdir",
        str(pytester.path),
        "--confcutdir",
        str(EXAMPLE_TESTS),
    )
    result.assert_outcomes(passed=17)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM accounts")).scalar() == 0
    Base.metadata.drop_all(db.engine)
