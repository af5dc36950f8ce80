"""Recovery with a server down (issue 21, item 5): ``flask uow recover``
and ``uow.recover()`` settle every prepared transaction they can reach and
report each unreachable engine in one line, without its password.

A crash after the decision leaves a transaction prepared on "other" and on
"third"; recovery then runs with "other" (or the coordinator, "default")
pointing at a port where no server listens.
"""

from __future__ import annotations

import collections.abc as cabc
import socket

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .pgtwophase import balances
from .pgtwophase import prepared_gids
from .test_two_phase import run_child

PASSWORD = "s3cret-pw"


def unreachable(url: str) -> str:
    """*url*'s database on 127.0.0.1, on a port nothing listens on, with a
    password that must never be shown.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return (
        sa.make_url(url)
        .set(host="127.0.0.1", port=port, password=PASSWORD, query={})
        .render_as_string(False)
    )


def recovery_app(uow: UnitOfWork, urls: dict[str, str]) -> Flask:
    app = Flask("recovery")
    app.config["UOW_ENGINES"] = urls
    app.config["UOW_TWO_PHASE"] = True
    uow.init_app(app)
    return app


@pytest.fixture
def crashed(two_phase_urls: dict[str, str]) -> cabc.Iterator[dict[str, str]]:
    """The databases after a crash past the decision: row 1 committed on
    "default", prepared on "other" and "third". Whatever the test left
    prepared is recovered after it.
    """
    child = run_child(two_phase_urls, "after-decision")
    assert child.returncode == 17, child.stderr
    assert prepared_gids(two_phase_urls["other"]) != []
    assert prepared_gids(two_phase_urls["third"]) != []
    yield two_phase_urls
    recover_all(two_phase_urls)


def recover_all(urls: dict[str, str]) -> None:
    uow = UnitOfWork()
    app = recovery_app(uow, urls)
    try:
        with app.app_context():
            uow.recover()
    finally:
        uow.dispose_engines(app)


def finish(crashed: dict[str, str]) -> None:
    """Recover with every server reachable, as the operator does once the
    server is back: what was left prepared is committed.
    """
    recover_all(crashed)
    assert [balances(url) for url in crashed.values()] == [{1: 100}] * 3


def test_cli_settles_what_it_reaches(uow: UnitOfWork, crashed: dict[str, str]) -> None:
    """With "other" down, 'flask uow recover' commits "third", prints one
    line naming "other" and its error without the password, ends with a
    one-line summary, and exits non-zero without a traceback.
    """
    down = unreachable(crashed["other"])
    app = recovery_app(uow, {**crashed, "other": down})
    try:
        result = app.test_cli_runner().invoke(args=["uow", "recover"])
    finally:
        uow.dispose_engines(app)
    output = result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert balances(crashed["third"]) == {1: 100}
    assert prepared_gids(crashed["third"]) == []
    lines = output.strip().splitlines()
    assert any(line.startswith("committed:") and "'third'" in line for line in lines)
    about_other = [line for line in lines if "'other'" in line]
    assert about_other, output
    assert "refused" in about_other[0].lower(), output
    assert str(sa.make_url(down).port) in about_other[0], output
    finish(crashed)


def test_recover_raises_after_settling_the_rest(
    uow: UnitOfWork, crashed: dict[str, str]
) -> None:
    """``uow.recover()`` with "other" down commits "third" first, then raises
    one error that lists "other", without its password; what it settled is
    on the error.
    """
    app = recovery_app(uow, {**crashed, "other": unreachable(crashed["other"])})
    try:
        with app.app_context(), pytest.raises(Exception) as info:
            uow.recover()
    finally:
        uow.dispose_engines(app)
    error = info.value
    assert not isinstance(error, sa.exc.SQLAlchemyError), error
    assert "'other'" in str(error)
    assert PASSWORD not in str(error)
    assert balances(crashed["third"]) == {1: 100}
    settled = [(r.engine, r.outcome) for r in error.resolutions]  # type: ignore[attr-defined]
    assert settled == [("third", "committed")]
    finish(crashed)


def test_cli_with_the_coordinator_down(
    uow: UnitOfWork, crashed: dict[str, str]
) -> None:
    """With "default" (which holds the decisions) down, recovery settles
    nothing and says why in one line, exiting non-zero without a traceback.
    """
    app = recovery_app(uow, {**crashed, "default": unreachable(crashed["default"])})
    try:
        result = app.test_cli_runner().invoke(args=["uow", "recover"])
    finally:
        uow.dispose_engines(app)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "'default'" in lines[0]
    assert prepared_gids(crashed["other"]) != []
    assert prepared_gids(crashed["third"]) != []
    finish(crashed)
