"""What user code around a transaction block may do: enter the same block
object again, run transactions in on_commit callbacks, and not end a block's
transaction from inside it.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import Database
from .models import Item


class Boom(Exception):
    pass


def test_block_entered_inside_itself_is_a_savepoint(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Re-entering a block object while it is open nests like a fresh block:
    commit inside commit keeps both, an inner failure undoes only the inner.
    """
    atomic = uow.transaction()
    with flask_app.app_context():
        with atomic as session:
            session.add(Item(name="outer"))
            with atomic:
                session.add(Item(name="inner"))
        with atomic as session:
            session.add(Item(name="outer2"))
            with pytest.raises(Boom):
                with atomic:
                    session.add(Item(name="undone"))
                    session.flush()
                    raise Boom()
    assert db.names() == ["inner", "outer", "outer2"]


def test_block_reused_outer_failure_undoes_the_inner_commit(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """An exception leaving the outer entry rolls back what the inner entry
    of the same object released, and the original exception propagates.
    """
    atomic = uow.transaction()
    with flask_app.app_context():
        with pytest.raises(Boom, match="outer"):
            with atomic as session:
                with atomic:
                    session.add(Item(name="inner"))
                with pytest.raises(Boom, match="inner"):
                    with atomic:
                        raise Boom("inner")
                raise Boom("outer")
        # Nothing is left open that a later commit could save.
        uow.session.add(Item(name="later"))
        uow.session.commit()
    assert db.names() == ["later"]


def test_block_reused_in_turn_behaves_like_separate_blocks(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A block object used again after it ended, after a commit or after a
    rollback, begins a new transaction each time.
    """
    atomic = uow.transaction()
    with flask_app.app_context():
        with pytest.raises(Boom):
            with atomic as session:
                session.add(Item(name="first"))
                raise Boom()
        with atomic as session:
            session.add(Item(name="second"))
        with atomic as session:
            session.add(Item(name="third"))
    assert db.names() == ["second", "third"]


def test_callbacks_run_one_after_another(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A callback that runs a transaction has that transaction's callbacks
    run before the next callback of the first commit starts.
    """
    order: list[int] = []

    def callback(number: int, add_hook: bool) -> None:
        with uow.transaction() as session:
            if add_hook:
                uow.on_commit(lambda: callback(number + 10, False))
            session.add(Item(name=str(number)))
            order.append(number)

    with flask_app.app_context():
        with uow.transaction():
            uow.on_commit(lambda: callback(1, True))
            uow.on_commit(lambda: callback(2, True))
    assert order == [1, 11, 2, 12]
    assert db.names() == ["1", "11", "12", "2"]


def test_callbacks_of_the_request_commit_run_one_after_another(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """The same holds for callbacks of the end-of-request commit."""
    order: list[str] = []

    def first() -> None:
        order.append("first starts")
        with uow.transaction() as session:
            session.add(Item(name="first"))
            uow.on_commit(lambda: order.append("first's own"))
        order.append("first ends")

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="view"))
        uow.on_commit(first)
        uow.on_commit(lambda: order.append("second"))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert order == ["first starts", "first's own", "first ends", "second"]
    assert db.names() == ["first", "view"]


@pytest.mark.parametrize("method", ["commit", "rollback", "close"])
@pytest.mark.parametrize("nested", [False, True], ids=["outermost", "nested"])
def test_ending_the_block_from_inside_is_refused(
    flask_app: Flask, uow: UnitOfWork, db: Database, method: str, nested: bool
) -> None:
    """uow.session.commit(), rollback() and close() inside a block raise a
    clear error and leave the block, its work and its callbacks intact.
    """
    sent: list[str] = []
    with flask_app.app_context():
        with uow.transaction() as session:
            session.add(Item(name="before"))
            session.flush()
            uow.on_commit(lambda: sent.append("committed"))
            if nested:
                inner = uow.transaction()
                inner.__enter__()
            with pytest.raises(RuntimeError, match=rf"'uow.session.{method}\(\)'"):
                getattr(uow.session, method)()
            session.add(Item(name="after"))
            if nested:
                inner.__exit__(None, None, None)
    assert sent == ["committed"]
    assert db.names() == ["after", "before"]


def test_ending_a_transactional_function_from_inside_is_refused(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """A view decorated with @uow.transactional that commits by itself gets
    the error, and its work is rolled back with it.
    """

    @flask_app.post("/")
    @uow.transactional
    def view() -> str:
        uow.session.add(Item(name="never"))
        uow.session.commit()
        return "ok"  # pragma: no cover - the commit raises

    assert flask_app.test_client().post("/").status_code == 500
    assert db.names() == []


def test_explicit_commits_outside_blocks_still_work(
    flask_app: Flask, uow: UnitOfWork, db: Database
) -> None:
    """Outside blocks, commit, rollback and close behave as SQLAlchemy's."""

    @flask_app.post("/")
    def view() -> str:
        uow.session.add(Item(name="committed"))
        uow.session.commit()
        uow.session.add(Item(name="rolled back"))
        uow.session.rollback()
        uow.session.close()
        uow.session.execute(sa.select(1))
        return "ok"

    assert flask_app.test_client().post("/").status_code == 200
    assert db.names() == ["committed"]
