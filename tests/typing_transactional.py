"""Checked by mypy, not run: decorators keep the signatures they wrap."""

from __future__ import annotations

import sqlalchemy.orm as orm
from flask import Response
from typing_extensions import assert_type

from flask_uow import UnitOfWork

uow = UnitOfWork()


@uow.transactional
def bare(account_id: int, *, amount: int = 0) -> str:
    return f"{account_id}:{amount}"


@uow.transactional(retries=3, isolation_level="SERIALIZABLE")
def configured(name: str) -> list[int]:
    return [len(name)]


@uow.transactional(durable=True)
async def coroutine(flag: bool) -> bytes:
    return b"x" if flag else b""


@uow.no_autocommit
def preview(page: int) -> Response:
    return Response(str(page))


def check() -> None:
    assert_type(bare(1, amount=2), str)
    assert_type(configured("x"), list[int])
    assert_type(preview(3), Response)
    with uow.transaction(isolation_level="SERIALIZABLE") as session:
        assert_type(session, orm.Session)
    uow.on_commit(lambda: None)


async def check_async() -> None:
    assert_type(await coroutine(True), bytes)
