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
        "trace",
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
        #: What telemetry records of the unit, while it is on.
        self.trace: UnitTrace | None = None

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
        "watches",
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
        #: What watches an outermost transaction (telemetry), told how each
        #: try ends; empty unless ``State.blocks`` has hooks.
        self.watches: tuple[BlockWatch, ...] = ()


class BlockWatch(t.Protocol):
    """What ``State.blocks`` hooks return for an outermost transaction (one
    ``uow.transaction()`` block, or every try of a transactional function).
    """

    def ended(self, committed: bool, keep: bool, error: BaseException | None) -> None:
        """A try ended: committed, or rolled back (*keep* says whether a
        commit was asked for), *error* being what ended it, if anything.
        """

    def retried(self, error: BaseException, attempt: int) -> None:
        """The function runs again after *error*; *attempt* counts retries."""

    def finished(self) -> None:
        """No try follows."""


class UnitTrace:
    """What telemetry keeps of one unit of work: its span, what its
    statements were, how its transactions ended. Filled by ``_telemetry``.
    """

    __slots__ = (
        "span",
        "context",
        "token",
        "current",
        "statements",
        "engines",
        "open_engines",
        "connections",
        "replica",
        "two_phase",
        "outcome",
        "error",
        "committed",
        "commit",
        "commit_start",
        "fields",
    )

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        #: The unit's span, its context and the token that made it current;
        #: None while only SQL comments are on.
        self.span: t.Any = None
        self.context: t.Any = None
        self.token: t.Any = None
        #: The innermost span of flask_uow's: a transaction block's, or the
        #: unit's.
        self.current: t.Any = None
        self.statements = 0
        #: Names of the engines the unit used, and that its current
        #: transaction used.
        self.engines: set[str] = set()
        self.open_engines: set[str] = set()
        #: The ``info`` of the connections of the current transaction that
        #: point to this (their pool entries' info: it outlives the
        #: connection objects).
        self.connections: list[dict[t.Any, t.Any]] = []
        self.replica = False
        self.two_phase = False
        #: How the unit's last transaction ended, and the error that ended it.
        self.outcome: str | None = None
        self.error: BaseException | None = None
        #: The current transaction committed.
        self.committed = False
        #: The span of a COMMIT in progress, and when it began.
        self.commit: t.Any = None
        self.commit_start = 0.0
        #: The SQL comment's fields that stay the same for the whole unit,
        #: encoded, sorted by key.
        self.fields = fields
