"""The records a unit of work keeps: its state, its open transactions and
savepoints. Data only; the code that fills them sits in the layers above.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm

if t.TYPE_CHECKING:
    from flask import Flask

    from ._changes import ChangeSet
    from ._query_info import UnitQueries

#: :attr:`Frame.outer_begin` when the transaction left the begin mode alone.
KEEP = object()
#: A connection a savepoint began on, and the savepoint's name there.
Savepoint = tuple[sa.Connection, str]
Callback = cabc.Callable[[], object]


class Unit:
    """The unit of work of one request, or of one application context outside
    requests. Its session is created on first use.
    """

    __slots__ = (
        "session",
        "environ",
        "finished",
        "failed",
        "rollback_only",
        "no_autocommit",
        "held",
        "frames",
        "pending",
        "ready",
        "connections",
        "savepoints",
        "change_sets",
        "queries",
    )

    def __init__(self, environ: dict[str, t.Any] | None = None) -> None:
        self.session: orm.Session | None = None
        #: The WSGI environ of the request this unit belongs to; ``None`` for
        #: the unit of an application context.
        self.environ = environ
        #: Set before the end-of-request commit or rollback, so that it runs once.
        self.finished = False
        #: An exception was raised while handling the request, handled or not.
        self.failed = False
        self.rollback_only = False
        self.no_autocommit = False
        #: What keeps the unit open past its request (a streamed response
        #: that is not closed yet); the request's end leaves it open then.
        self.held: t.Any = None
        #: The active ``uow.transaction()`` blocks, outermost first.
        self.frames: list[Frame] = []
        #: on_commit callbacks waiting for the session's next real commit.
        self.pending: list[Callback] = []
        #: on_commit callbacks whose commit happened, waiting to be run.
        self.ready: list[Callback] = []
        #: The connections of the session's transaction, in the order it began
        #: on them; empty when no database transaction is open.
        self.connections: list[sa.Connection] = []
        #: The connections each open savepoint began on, with its name.
        self.savepoints: dict[orm.SessionTransaction, list[Savepoint]] = {}
        #: Changes recorded per transaction level, while signals have receivers.
        self.change_sets: dict[orm.SessionTransaction, ChangeSet] = {}
        #: The statements the unit ran, while query insight is on.
        self.queries: UnitQueries | None = None

    @property
    def marked_for_rollback(self) -> bool:
        """An exception, :meth:`~flask_uow.UnitOfWork.mark_rollback_only` or a
        :meth:`~flask_uow.UnitOfWork.no_autocommit` view says that the unit's
        own work must not be committed.
        """
        return self.failed or self.rollback_only or self.no_autocommit


class Frame:
    """One active transaction of a unit of work: what one entry into a
    ``uow.transaction()`` block (or one call of a transactional function)
    began. Kept on the unit's stack, so that a block object entered again, or
    several times in turn, behaves exactly like separate blocks.
    """

    __slots__ = (
        "owner",
        "app",
        "unit",
        "session",
        "savepoint",
        "callbacks",
        "rollback_only",
        "committing",
        "doomed",
        "outer_begin",
    )

    def __init__(
        self,
        owner: object,
        app: Flask,
        unit: Unit,
        session: orm.Session,
        savepoint: orm.SessionTransaction | None,
    ) -> None:
        #: The block that began it.
        self.owner = owner
        self.app = app
        self.unit = unit
        self.session = session
        #: The SAVEPOINT of a nested transaction; None for the outermost one.
        self.savepoint = savepoint
        #: on_commit callbacks registered inside this transaction; they live
        #: and die with it, whatever the database did.
        self.callbacks: list[Callback] = []
        self.rollback_only = False
        #: The outermost transaction's COMMIT has been asked for.
        self.committing = False
        #: Why this transaction must not commit: a savepoint inside it could
        #: not be rolled back.
        self.doomed: BaseException | None = None
        #: How the session began transactions on SQLite before this outermost
        #: transaction; put back when it ends.
        self.outer_begin: t.Any = KEEP
