"""Commits across several engines: two-phase commit with a recorded decision,
and, without it, a log of which engines a failed commit reached.

With ``UOW_TWO_PHASE`` on, a commit whose transaction wrote to two or more
engines goes like this, driven from the session's own commit so that every
commit path (end of request, ``uow.transaction()``, explicit commits) takes it:

1.  ``before_commit`` (after the final flush): the coordinator, the
    ``"default"`` engine's transaction, inserts a decision row into
    ``flask_uow_decisions``; every other engine that wrote runs
    ``PREPARE TRANSACTION`` with an id that names the decision.
2.  SQLAlchemy commits the connections: the coordinator's COMMIT makes the
    decision durable; the prepared connections have nothing left to commit.
3.  ``after_commit``: ``COMMIT PREPARED`` on each prepared transaction.

A crash anywhere leaves prepared transactions that recovery (``_recovery``)
settles by the decision row: committed if it says so, rolled back otherwise.
A unit whose commit failed settles its own prepared transactions the same way
when its transaction ends.
"""

from __future__ import annotations

import collections.abc as cabc
import hashlib
import logging
import typing as t
import uuid
import weakref

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import current_app
from flask import has_app_context
from sqlalchemy.dialects import postgresql

from ._engines import same_engine
from ._retry import sqlstate

if t.TYPE_CHECKING:
    from ._state import State

PREFIX = "flask_uow"
#: Prepared transactions of the commit in progress: (engine name, connection,
#: transaction id).
_PREPARED = "flask_uow.prepared"
#: The commit in progress read the namespace (and made the decision table).
_IDENTIFIED = "flask_uow.identified"
#: Engines whose COMMIT was sent, in order, for the log of a failed commit.
_ATTEMPTS = "flask_uow.commit_attempts"

decisions = sa.Table(
    "flask_uow_decisions",
    sa.MetaData(),
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("committed", sa.Boolean, nullable=False),
    sa.Column(
        "created",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.clock_timestamp(),
    ),
)

_logger = logging.getLogger("flask_uow")


def logger() -> logging.Logger:
    """The current app's logger; a module logger outside app contexts."""
    return current_app.logger if has_app_context() else _logger


def check_two_phase(value: t.Any, engines: cabc.Mapping[str, sa.Engine]) -> bool:
    """Validate ``UOW_TWO_PHASE`` against the engines it would apply to."""
    if not isinstance(value, bool):
        raise TypeError(
            f"'UOW_TWO_PHASE' must be True or False, not {type(value).__name__!r}."
            " For example app.config['UOW_TWO_PHASE'] = True."
        )
    if value:
        for name, engine in engines.items():
            if engine.dialect.name != "postgresql":
                raise ValueError(
                    f"'UOW_TWO_PHASE' is on, but UOW_ENGINES[{name!r}] is a"
                    f" {engine.dialect.name!r} database, which flask_uow cannot"
                    " prepare transactions on. Use PostgreSQL for every engine,"
                    " or turn 'UOW_TWO_PHASE' off."
                )
    return value


def connections_by_name(
    session: orm.Session, names: cabc.Mapping[sa.Engine, str]
) -> dict[str, sa.Connection]:
    """The connections of the session's transaction (its unit of work keeps
    them, see ``_bridge``), by engine name, in the order they began.
    """
    unit = getattr(session, "uow_unit", None)
    connections: list[sa.Connection] = getattr(unit, "connections", [])
    named = ((name_of(names, conn.engine), conn) for conn in connections)
    return {name: conn for name, conn in named if name is not None}


def name_of(names: cabc.Mapping[sa.Engine, str], engine: sa.Engine) -> str | None:
    """The name of *engine*, or of the engine it is a copy of: on SQLite the
    session uses copies made with ``execution_options()`` (see ``_sqlite``),
    which share the engine's pool.
    """
    for known, name in names.items():
        if same_engine(known, engine):
            return name
    return None


class Coordinator:
    """What two-phase commit and recovery need to know about one app."""

    def __init__(self, engines: cabc.Mapping[str, sa.Engine]) -> None:
        self.engines = engines
        self.names = {engine: name for name, engine in engines.items()}
        self._namespace: str | None = None
        #: The decision table is known to exist (a transaction that created
        #: it committed).
        self._table = False

    def namespace(self) -> str:
        """The part of every transaction id that names this app's decision
        table: a hash of the ``"default"`` database's identity (the cluster's
        system identifier and the database name). Recovery only touches
        prepared transactions of its own namespace. Creates the decision table
        the first time.
        """
        if self._namespace is None or not self._table:
            with self.engines["default"].begin() as conn:
                self._namespace = self._identify(conn)
            self._table = True
        return self._namespace

    def _identify(self, conn: sa.Connection) -> str:
        """The namespace, read on *conn*; the decision table is created in
        its transaction if it does not exist yet.
        """
        identity = conn.execute(
            sa.text(
                "SELECT system_identifier::text || '/' || current_database()"
                " FROM pg_control_system()"
            )
        ).scalar_one()
        if (
            conn.execute(sa.text("SELECT to_regclass('flask_uow_decisions')")).scalar()
            is None
        ):
            # Serialize creation among workers starting together; IF NOT
            # EXISTS looks at the catalog as committed now, whatever the
            # transaction's isolation level, so the second one waits, then
            # creates nothing.
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                {"name": decisions.name},
            )
            conn.execute(sa.schema.CreateTable(decisions, if_not_exists=True))
        return hashlib.sha1(identity.encode()).hexdigest()[:12]

    def gid(self, decision: str, engine: str) -> str:
        namespace = self._namespace if self._namespace is not None else self.namespace()
        return f"{PREFIX}:{namespace}:{decision}:{engine}"

    def decide(self, decision: str, *, dry_run: bool = False) -> bool | None:
        """The outcome recorded for *decision*: True to commit, False to roll
        back. Unless *dry_run*, an undecided decision is decided "roll back" by
        inserting that outcome; if the unit of work that owns it is still
        committing, the insert waits for it (up to five seconds, then None).
        """
        if not self._table:  # The commit that would have made it failed.
            self.namespace()
        with self.engines["default"].begin() as conn:
            if not dry_run:
                conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
                insert = postgresql.insert(decisions)
                try:
                    conn.execute(
                        insert.values(
                            id=decision, committed=False
                        ).on_conflict_do_nothing()
                    )
                except sa.exc.OperationalError as e:
                    if sqlstate(e) == "55P03":  # lock_not_available
                        return None
                    raise  # pragma: no cover - the server failed
            committed = conn.execute(
                sa.select(decisions.c.committed).where(decisions.c.id == decision)
            ).scalar()
        return bool(committed)

    def finish(self, engine: str, gid: str, commit: bool) -> None:
        """COMMIT PREPARED or ROLLBACK PREPARED *gid* on a connection of its
        own. A transaction that is gone was finished by someone else.
        """
        with self.engines[engine].connect() as conn:
            try:
                if commit:
                    conn.commit_prepared(gid, recover=True)
                else:
                    conn.rollback_prepared(gid, recover=True)
            except Exception as e:
                if sqlstate(e) != "42704":  # undefined_object: already finished
                    raise

    def before_commit(self, session: orm.Session) -> None:
        """Phase one, once the last flush is done: decide, then prepare."""
        if session.in_nested_transaction() or not session.in_transaction():
            return
        session.flush()  # The last one: what it writes must be prepared too.
        connections = connections_by_name(session, self.names)
        if len(connections) < 2:
            return
        writers = [name for name, conn in connections.items() if _wrote(conn)]
        if len(writers) < 2:
            return
        coordinator = session.connection(
            bind_arguments={"bind": self.engines["default"]}
        )
        if not self._table:
            # On the unit's own connection: a second one to "default" while
            # the unit holds this one waits forever on a pool (or a pooler's
            # pool) that the units starting together have exhausted.
            self._namespace = self._identify(coordinator)
            session.info[_IDENTIFIED] = True
        decision = uuid.uuid4().hex
        coordinator.execute(decisions.insert().values(id=decision, committed=True))
        prepared: list[tuple[str, sa.Connection, str]] = []
        session.info[_PREPARED] = prepared
        for name in writers:
            if name == "default":
                continue
            gid = self.gid(decision, name)
            statement = sa.text("PREPARE TRANSACTION :gid").bindparams(
                sa.bindparam("gid", gid, literal_execute=True)
            )
            try:
                connections[name].execute(statement)
            except sa.exc.DBAPIError as e:
                if sqlstate(e) == "55000":  # object_not_in_prerequisite_state
                    raise RuntimeError(
                        f"The engine {name!r} cannot prepare transactions: its"
                        " PostgreSQL server has 'max_prepared_transactions' set"
                        " to 0, so 'UOW_TWO_PHASE' cannot work. Set"
                        " max_prepared_transactions (for example to the value of"
                        " max_connections) in postgresql.conf and restart the"
                        " server."
                    ) from e
                raise
            prepared.append((name, connections[name], gid))

    def after_commit(self, session: orm.Session) -> None:
        """Phase two: the decision is committed; commit what was prepared."""
        if session.info.pop(_IDENTIFIED, False):
            self._table = True  # Created, if it was, by this commit.
        prepared = session.info.pop(_PREPARED, None)
        if not prepared:
            return
        for name, connection, gid in prepared:
            try:
                connection.commit_prepared(gid, recover=True)
            except Exception as e:
                if sqlstate(e) == "42704":  # Recovery finished it already.
                    continue
                logger().exception(
                    "flask_uow: the commit is decided but 'COMMIT PREPARED %s'"
                    " failed on the engine %r. Run 'flask uow recover' to finish"
                    " it.",
                    gid,
                    name,
                )

    def after_transaction_end(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        """Settle by the decision record what a failed commit left prepared."""
        if transaction.parent is not None:
            return
        session.info.pop(_IDENTIFIED, None)  # Rolled back: the table may not be.
        prepared = session.info.pop(_PREPARED, None)
        if not prepared:
            return
        decision = prepared[0][2].split(":")[2]
        try:
            commit = self.decide(decision)
            if commit is None:  # pragma: no cover - the unit has ended
                raise RuntimeError("the decision is still being made")
            for name, _, gid in prepared:
                self.finish(name, gid, commit)
        except Exception:
            logger().exception(
                "flask_uow: the commit failed after transactions were prepared"
                " (%s), and settling them failed. Run 'flask uow recover'.",
                ", ".join(gid for _, _, gid in prepared),
            )


def prepared(session: orm.Session) -> bool:
    """Whether *session*'s commit in progress prepared transactions: it
    commits with two-phase commit.
    """
    return bool(session.info.get(_PREPARED))


def _wrote(connection: sa.Connection) -> bool:
    """Whether the connection's transaction wrote anything: PostgreSQL gives a
    transaction an id at its first write (or row lock).
    """
    return bool(
        connection.exec_driver_sql(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
        ).scalar()
    )


class PartialCommitLog:
    """Without two-phase commit: when a commit across several engines fails
    part-way, log which engines committed and which did not.
    """

    def __init__(self, engines: cabc.Mapping[str, sa.Engine]) -> None:
        self.names = {engine: name for name, engine in engines.items()}
        #: The commit attempts of each connection's session, while it commits.
        self.attempts: weakref.WeakKeyDictionary[sa.Connection, list[str]] = (
            weakref.WeakKeyDictionary()
        )
        for engine in engines.values():
            sa.event.listen(engine, "commit", self.on_connection_commit)

    def on_connection_commit(self, connection: sa.Connection) -> None:
        attempts = self.attempts.get(connection)
        if attempts is not None:
            attempts.append(name_of(self.names, connection.engine) or "?")

    def before_commit(self, session: orm.Session) -> None:
        if session.in_nested_transaction():
            return
        # SQLAlchemy 2.0 sends before_commit before its final flush: flush
        # now, so that the engines the flush writes to are counted.
        session.flush()
        connections = connections_by_name(session, self.names)
        if len(connections) < 2:
            return
        attempts: list[str] = []
        session.info[_ATTEMPTS] = (attempts, list(connections))
        for connection in connections.values():
            self.attempts[connection] = attempts

    def after_commit(self, session: orm.Session) -> None:
        session.info.pop(_ATTEMPTS, None)

    def after_transaction_end(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        if transaction.parent is not None:
            return
        attempts, names = session.info.pop(_ATTEMPTS, (None, []))
        if attempts and len(attempts) > 1:
            *committed, failed = attempts
            others = [name for name in names if name not in attempts]
            logger().error(
                "flask_uow: the commit failed part-way and the databases now"
                " disagree. Committed on %s; failed on %r; not committed on %s."
                " Set 'UOW_TWO_PHASE' to make commits across engines atomic.",
                ", ".join(repr(name) for name in committed),
                failed,
                ", ".join(repr(name) for name in others) or "no other engine",
            )


def install(state: State, two_phase: bool) -> Coordinator | None:
    """Attach the listeners to the app's sessionmaker: two-phase commit if
    *two_phase*, else the log of partial commits (with several engines).
    Returns the coordinator that recovery uses.
    """
    engines = state.engines
    if len(engines) < 2 and not two_phase:
        return None
    handler: Coordinator | PartialCommitLog
    handler = Coordinator(engines) if two_phase else PartialCommitLog(engines)

    def before_commit(session: orm.Session) -> None:
        # A session joined to an outer transaction (test isolation) commits
        # nothing: its commits release savepoints.
        if not isinstance(session.bind, sa.Connection):
            handler.before_commit(session)

    factory = state.factory
    sa.event.listen(factory, "before_commit", before_commit)
    sa.event.listen(factory, "after_commit", handler.after_commit)
    sa.event.listen(factory, "after_transaction_end", handler.after_transaction_end)
    return handler if isinstance(handler, Coordinator) else None
