"""Transactions declared in code: an outermost one commits, a nested one is a
SAVEPOINT, and an outermost function can be retried.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import functools
import inspect
import time
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from . import signals
from ._aborted import savepoint_failed
from ._arguments import check_decoratable
from ._bridge import has_receivers
from ._bridge import send_quietly
from ._lifecycle import rollback_quietly
from ._lifecycle import run_callbacks
from ._retry import backoff
from ._retry import is_disconnect
from ._retry import lost_connection
from ._state import State
from ._unit import BlockWatch
from ._unit import Frame
from ._unit import KEEP
from ._unit import Unit

P = t.ParamSpec("P")
R = t.TypeVar("R")


def callback_list(unit: Unit) -> list[cabc.Callable[[], object]]:
    """Where an on_commit callback registered now goes: the innermost
    transaction's list, or outside of one, the unit's list of callbacks that
    wait for the session's next commit.
    """
    if unit.frames:
        return unit.frames[-1].callbacks
    return unit.pending


class TransactionBlock:
    """``uow.transaction()``: entering begins a transaction (or a SAVEPOINT
    inside another) in the current app's unit of work, leaving commits it or
    rolls it back. The object holds only its arguments; it can be made
    anywhere and entered again, nested or in turn.
    """

    def __init__(
        self,
        find_state: cabc.Callable[[], tuple[Flask, State]],
        durable: bool,
        isolation_level: str | None,
        sqlite_begin: str | None = None,
    ) -> None:
        self.find_state = find_state
        self.durable = durable
        self.isolation_level = isolation_level
        self.sqlite_begin = sqlite_begin
        #: A transactional function's block: its tries are watched as one.
        self.retrying = False

    def __enter__(self) -> orm.Session:
        return self.begin().session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        app, state = self.find_state()
        frames = state.unit(app).frames
        if not frames or frames[-1].owner is not self:  # pragma: no cover
            raise RuntimeError(
                "A 'uow.transaction()' block ended while a transaction begun"
                " after it was still open. End transactions in the reverse"
                " order of their beginning, as nested 'with' blocks do."
            )
        self.end(frames[-1], exc)

    def begin(self, watches: tuple[BlockWatch, ...] = ()) -> Frame:
        """Begin a transaction, or a SAVEPOINT inside the current one, and
        push its frame on the unit's stack. An outermost transaction is
        watched by *watches* (a retried function's), or by new ones.
        """
        app, state = self.find_state()
        unit = state.unit(app)
        session = state.session(app)
        if unit.frames:
            if self.durable:
                raise RuntimeError(
                    "A durable transaction was started inside another transaction."
                    " Durable transactions must be outermost, so that their commit"
                    " is final; call it outside of any other transaction."
                )
            if self.isolation_level is not None:
                raise RuntimeError(
                    f"isolation_level={self.isolation_level!r} was given to a"
                    " transaction nested inside another, which cannot change"
                    " the isolation level. Give it to the outermost transaction."
                )
            frame = Frame(self, app, unit, session, session.begin_nested())
        else:
            self._end_prior_work(unit, session)
            route = getattr(session, "uow_route", None)
            if route is not None:  # From now on, the primaries.
                route.to_primary()
            frame = Frame(self, app, unit, session, None)
            if getattr(session, "uow_begin_modes", None) is not None:
                # SQLite: an outermost transaction takes the write lock at
                # once unless told otherwise; later ones begin as the unit's.
                frame.outer_begin = session.uow_begin_mode  # type: ignore[attr-defined]
                session.uow_begin_mode = self.sqlite_begin or "write"  # type: ignore[attr-defined]
            # A session joined to an outer transaction (test isolation) cannot
            # change the isolation level that transaction began with.
            if self.isolation_level is not None and not isinstance(
                session.bind, sa.Connection
            ):
                try:
                    session.connection(
                        execution_options={"isolation_level": self.isolation_level}
                    )
                except BaseException:
                    _restore_begin(frame)
                    raise
            if state.blocks:
                frame.watches = watches or tuple(hook(unit) for hook in state.blocks)
        unit.frames.append(frame)
        return frame

    def _end_prior_work(self, unit: Unit, session: orm.Session) -> None:
        """Start the outermost transaction afresh: what the unit of work did
        before it (a before_request hook's reads, say) is committed, or rolled
        back if the unit is already marked to roll back.
        """
        if not session.in_transaction():
            return
        if unit.marked_for_rollback:
            session.rollback()
        else:
            # Its callbacks become ready and run when this transaction ends;
            # run now, a callback that writes would join this transaction.
            session.commit()

    def end(self, frame: Frame, exc: BaseException | None) -> None:
        """Pop *frame*, the innermost transaction, and commit it, or roll it
        back when *exc* is not None or it is marked rollback-only.
        """
        frame.unit.frames.pop()
        keep = exc is None and not frame.rollback_only
        if frame.savepoint is not None:
            self._end_savepoint(frame, frame.savepoint, keep)
            return
        committed = False
        error: BaseException | None = None
        try:
            if not keep:
                if exc is None:
                    frame.session.rollback()
                else:
                    rollback_quietly(frame.app, frame.session)
            elif frame.doomed is not None:
                rollback_quietly(frame.app, frame.session)
                raise savepoint_failed(
                    connection_lost=lost_connection(frame.doomed)
                ) from frame.doomed
            else:
                self._commit(frame)
                committed = True
        except BaseException as e:
            error = e
            raise
        finally:
            _restore_begin(frame)
            for watch in frame.watches:
                watch.ended(committed, keep, error)
                if not self.retrying:
                    watch.finished()

    def _end_savepoint(
        self, frame: Frame, savepoint: orm.SessionTransaction, keep: bool
    ) -> None:
        unit = frame.unit
        parent = unit.frames[-1]
        if keep and frame.doomed is None:
            touched = list(unit.savepoints.get(savepoint, ()))
            try:
                savepoint.commit()
            except BaseException:
                # The RELEASE (or the flush before it) failed. SQLAlchemy has
                # given up on the savepoint and would send nothing to roll it
                # back, while PostgreSQL may hold the transaction aborted:
                # roll back to it by name, so that the outer work can still
                # commit.
                savepoint.rollback()
                self._roll_back_to(frame.app, parent, touched)
                raise
            parent.callbacks.extend(frame.callbacks)
            return
        try:
            savepoint.rollback()
        except Exception as e:
            # An exception may be on its way out already; keep it, log this
            # one, and make sure the savepoint's work is never committed.
            frame.app.logger.exception("flask_uow: rolling back a savepoint failed.")
            parent.doomed = parent.doomed or e
        if keep and frame.doomed is not None:
            raise savepoint_failed(
                connection_lost=lost_connection(frame.doomed)
            ) from frame.doomed

    def _roll_back_to(
        self, app: Flask, parent: Frame, touched: list[tuple[sa.Connection, str]]
    ) -> None:
        for connection, name in touched:
            try:
                connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
            except Exception as e:
                app.logger.exception(
                    "flask_uow: rolling back to a savepoint whose release failed"
                    " failed too; the enclosing transaction will not commit."
                )
                parent.doomed = parent.doomed or e

    def _commit(self, frame: Frame) -> None:
        session = frame.session
        try:
            session.flush()
            frame.committing = True
            session.commit()
        except BaseException:
            rollback_quietly(frame.app, session)
            raise
        frame.unit.ready.extend(frame.callbacks)
        run_callbacks(frame.app, frame.unit)


def _restore_begin(frame: Frame) -> None:
    """The outermost transaction has ended: later ones begin as the unit's."""
    if frame.outer_begin is not KEEP:
        frame.session.uow_begin_mode = frame.outer_begin  # type: ignore[attr-defined]


def before_retry(
    app: Flask, session: orm.Session, exc: BaseException, attempt: int
) -> None:
    """Log and announce that a transactional function is run again."""
    app.logger.info(
        "flask_uow: retrying a transaction (retry %d) after %s.",
        attempt,
        type(exc).__name__,
    )
    if has_receivers(signals.before_retry, app):
        send_quietly(
            app, signals.before_retry, session=session, exception=exc, attempt=attempt
        )


class Retrier:
    """Runs a function in a transaction, again after transient errors."""

    def __init__(
        self,
        app: Flask,
        state: State,
        retries: int,
        durable: bool,
        isolation_level: str | None,
        sqlite_begin: str | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.retries = retries
        self.attempt = 0
        self.block = TransactionBlock(
            lambda: (app, state), durable, isolation_level, sqlite_begin
        )
        self.block.retrying = True
        #: What watches the tries, from the first that began.
        self.watches: tuple[BlockWatch, ...] = ()

    def begin(self) -> Frame | Exception:
        """Begin a try; an outermost transaction that fails to begin (a
        locked SQLite database, say) is returned as its error, to retry.
        """
        unit = self.state.unit(self.app)
        outermost = not unit.frames
        try:
            frame = self.block.begin(self.watches)
        except Exception as e:
            if not outermost:
                raise
            if self.state.blocks and not self.watches:  # Its retry is watched too.
                self.watches = tuple(hook(unit) for hook in self.state.blocks)
            return e
        if frame.watches:
            self.watches = frame.watches
        return frame

    def next_delay(self, frame: Frame | None, exc: Exception) -> float:
        """Seconds to wait before the next try, or re-raise *exc*. *frame* is
        None when an outermost transaction failed to begin.
        """
        if (
            self.attempt >= self.retries
            or (frame is not None and frame.savepoint is not None)
            or (frame is not None and frame.committing and is_disconnect(exc))
            or not self.state.policy._retry_classifier(exc)
        ):
            raise exc
        self.attempt += 1
        for watch in self.watches:
            watch.retried(exc, self.attempt)
        session = self.state.session(self.app) if frame is None else frame.session
        before_retry(self.app, session, exc, self.attempt)
        return backoff(self.attempt, self.state.retry_delay, self.state.max_delay)

    def call(self, fn: cabc.Callable[..., R], args: t.Any, kwargs: t.Any) -> R:
        try:
            while True:
                frame = self.begin()
                if isinstance(frame, Exception):
                    delay = self.next_delay(None, frame)
                    time.sleep(delay)
                    continue
                try:
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as e:
                        self.block.end(frame, e)
                        raise
                    self.block.end(frame, None)
                    return result
                except Exception as e:
                    delay = self.next_delay(frame, e)
                time.sleep(delay)
        finally:
            for watch in self.watches:
                watch.finished()

    async def call_async(
        self,
        fn: cabc.Callable[..., cabc.Awaitable[R]],
        args: t.Any,
        kwargs: t.Any,
    ) -> R:
        try:
            while True:
                frame = self.begin()
                if isinstance(frame, Exception):
                    delay = self.next_delay(None, frame)
                    await asyncio.sleep(delay)
                    continue
                try:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as e:
                        self.block.end(frame, e)
                        raise
                    self.block.end(frame, None)
                    return result
                except Exception as e:
                    delay = self.next_delay(frame, e)
                await asyncio.sleep(delay)
        finally:
            for watch in self.watches:
                watch.finished()


def run_in_transactions(
    fn: cabc.Callable[P, R], make_retrier: cabc.Callable[[], Retrier]
) -> cabc.Callable[P, R]:
    """Wrap *fn* so that each call runs through a new :class:`Retrier`."""
    check_decoratable(fn)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> t.Any:
            return await make_retrier().call_async(fn, args, kwargs)

        return t.cast("cabc.Callable[P, R]", async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return make_retrier().call(fn, args, kwargs)

    return wrapper
