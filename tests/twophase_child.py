"""Run one cross-engine request with two-phase commit, and crash the process
(``os._exit``, no cleanup) at the point named by ``UOW_TEST_CRASH_AT``:

``before-prepare``
    before the first PREPARE TRANSACTION is sent;
``after-first-prepare``, ``after-all-prepares``
    after the first, and after the last, PREPARE TRANSACTION;
``after-decision``
    after the coordinator's COMMIT, before any COMMIT PREPARED;
``after-first-commit-prepared``
    after the first COMMIT PREPARED.

The engines' URLs come as JSON in ``UOW_TEST_URLS``. The crash is injected by
listeners and a wrapper installed here, in the test's child process only.
"""

from __future__ import annotations

import json
import os
import typing as t

import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork
from tests.pgtwophase import ACCOUNTS

CRASH_AT = os.environ["UOW_TEST_CRASH_AT"]
PREPARES = 0


def crash() -> t.NoReturn:
    os._exit(17)


def before_execute(
    conn: sa.Connection, cursor: t.Any, statement: str, *a: t.Any
) -> None:
    if statement.startswith("PREPARE TRANSACTION") and CRASH_AT == "before-prepare":
        crash()


def after_execute(
    conn: sa.Connection, cursor: t.Any, statement: str, *a: t.Any
) -> None:
    global PREPARES
    if statement.startswith("PREPARE TRANSACTION"):
        PREPARES += 1
        if CRASH_AT == "after-first-prepare" or (
            CRASH_AT == "after-all-prepares" and PREPARES == 2
        ):
            crash()


original_commit_prepared = sa.Connection.commit_prepared


def commit_prepared(self: sa.Connection, xid: t.Any, recover: bool = False) -> None:
    if CRASH_AT == "after-decision":
        crash()
    original_commit_prepared(self, xid, recover)
    if CRASH_AT == "after-first-commit-prepared":
        crash()


def main() -> None:
    app = Flask(__name__)
    app.config["UOW_ENGINES"] = json.loads(os.environ["UOW_TEST_URLS"])
    app.config["UOW_TWO_PHASE"] = True
    uow = UnitOfWork(app)

    @app.post("/open")
    def open_accounts() -> str:
        for table in ACCOUNTS.values():
            uow.session.execute(sa.insert(table).values(id=1, balance=100))
        return "opened"

    with app.app_context():
        for engine in uow.engines.values():
            sa.event.listen(engine, "before_cursor_execute", before_execute)
            sa.event.listen(engine, "after_cursor_execute", after_execute)
    sa.Connection.commit_prepared = commit_prepared  # type: ignore[method-assign]
    response = app.test_client().post("/open")
    print(response.status_code, response.get_data(as_text=True))


if __name__ == "__main__":
    main()
