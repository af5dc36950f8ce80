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

import sqlalchemy.orm as orm
from flask import Flask

from ._lifecycle import rollback_quietly
from ._lifecycle import run_callbacks
from ._lifecycle import State
from ._lifecycle import Unit
from ._retry import backoff
from ._retry import is_disconnect

P = t.ParamSpec("P")
R = t.TypeVar("R")

#: The levels a transaction may ask for; each dialect accepts a subset.
ISOLATION_LEVELS = frozenset(
    {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"}
)


def check_isolation_level(level: t.Any) -> str | None:
    """Validate and normalize an ``isolation_level`` argument."""
    if level is None:
        return None
    normal = level.upper().replace("_", " ") if isinstance(level, str) else None
    if normal not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation_level={level!r} is not an isolation level. Use one of"
            f" {', '.join(repr(x) for x in sorted(ISOLATION_LEVELS))} (the"
            " database must support it), or None for the engine's default."
        )
    return normal


def check_retries(retries: t.Any) -> int:
    """Validate a ``retries`` argument."""
    if not isinstance(retries, int) or isinstance(retries, bool):
        raise TypeError(
            f"retries={retries!r} must be an int: the number of times to run the"
            " function again after a transient error, for example retries=3."
        )
    if retries < 0:
        raise ValueError(
            f"retries={retries} is negative. Use 0 (the default) for no retries,"
            " or a positive number of retries."
        )
    return retries


def check_decoratable(fn: t.Any) -> None:
    if not callable(fn):
        raise TypeError(
            f"'transactional' decorates a function, not {type(fn).__name__!r}."
            " Use it as @uow.transactional or @uow.transactional(retries=3)."
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"'transactional' cannot decorate the generator function"
            f" {fn.__name__!r}: its body runs after the call returns, outside"
            " the transaction. Decorate a function that consumes the generator,"
            " or use 'with uow.transaction():' inside the generator."
        )


def transaction_argument_error(unsupported: cabc.Mapping[str, t.Any]) -> str:
    if "retries" in unsupported:
        return (
            "'transaction()' does not take 'retries': a with-block cannot be run"
            " again. Move the block into a function decorated with"
            " @uow.transactional(retries=...)."
        )
    names = ", ".join(repr(name) for name in unsupported)
    return (
        f"'transaction()' got unexpected arguments {names}. It takes 'durable'"
        " and 'isolation_level'."
    )


class Frame:
    """One active transaction of a unit of work."""

    __slots__ = ("savepoint", "callbacks", "rollback_only")

    def __init__(self, savepoint: orm.SessionTransaction | None) -> None:
        #: The SAVEPOINT of a nested transaction; None for the outermost one.
        self.savepoint = savepoint
        #: on_commit callbacks registered inside this transaction; they live
        #: and die with it, whatever the database did.
        self.callbacks: list[cabc.Callable[[], object]] = []
        self.rollback_only = False


def callback_list(unit: Unit) -> list[cabc.Callable[[], object]]:
    """Where an on_commit callback registered now goes: the innermost
    transaction's list, or outside of one, the unit's list of callbacks that
    wait for the session's next commit.
    """
    if unit.frames:
        return unit.frames[-1].callbacks
    return unit.pending


class TransactionBlock:
    """One run of ``uow.transaction()``: entering begins a transaction (or a
    SAVEPOINT inside another), leaving commits it or rolls it back.
    """

    def __init__(
        self, app: Flask, state: State, durable: bool, isolation_level: str | None
    ) -> None:
        self.app = app
        self.state = state
        self.durable = durable
        self.isolation_level = isolation_level
        self.outermost = False
        self.committing = False

    def __enter__(self) -> orm.Session:
        unit = self.unit = self.state.unit(self.app)
        session = self.session = self.state.session(self.app)
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
            self.frame = Frame(session.begin_nested())
        else:
            self._end_prior_work(unit, session)
            # Under test isolation all work shares one outer transaction,
            # whose isolation level was fixed when it began.
            if self.isolation_level is not None and self.state.isolation is None:
                session.connection(
                    execution_options={"isolation_level": self.isolation_level}
                )
            self.outermost = True
            self.frame = Frame(None)
        unit.frames.append(self.frame)
        return session

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        frame = self.unit.frames.pop()
        if frame is not self.frame:  # pragma: no cover - blocks always nest
            raise RuntimeError("flask_uow transactions ended out of order.")
        keep = exc is None and not frame.rollback_only
        if frame.savepoint is not None:
            self._end_savepoint(frame, frame.savepoint, keep)
        elif keep:
            self._commit(frame)
        elif exc is None:
            self.session.rollback()
        else:
            rollback_quietly(self.app, self.session)

    def _end_savepoint(
        self, frame: Frame, savepoint: orm.SessionTransaction, keep: bool
    ) -> None:
        if keep:
            try:
                savepoint.commit()
            except BaseException:
                savepoint.rollback()
                raise
            callback_list(self.unit).extend(frame.callbacks)
            return
        try:
            savepoint.rollback()
        except Exception:
            # An exception is already on its way out; keep it, log this one.
            self.app.logger.exception("flask_uow: rolling back a savepoint failed.")

    def _commit(self, frame: Frame) -> None:
        session = self.session
        try:
            session.flush()
            self.committing = True
            session.commit()
        except BaseException:
            rollback_quietly(self.app, session)
            raise
        self.unit.ready.extend(frame.callbacks)
        run_callbacks(self.app, self.unit)


class Retrier:
    """Runs a function in a transaction, again after transient errors."""

    def __init__(
        self,
        app: Flask,
        state: State,
        retries: int,
        durable: bool,
        isolation_level: str | None,
    ) -> None:
        self.app = app
        self.state = state
        self.retries = retries
        self.attempt = 0
        #: A new block for each try.
        self.block = functools.partial(
            TransactionBlock, app, state, durable, isolation_level
        )

    def next_delay(self, block: TransactionBlock, exc: Exception) -> float:
        """Seconds to wait before the next try, or re-raise *exc*."""
        if (
            self.attempt >= self.retries
            or not block.outermost
            or (block.committing and is_disconnect(exc))
            or not self.state.get_classifier()(exc)
        ):
            raise exc
        self.attempt += 1
        self.state.before_retry(self.app, block.session, exc, self.attempt)
        return backoff(self.attempt, self.state.retry_delay, self.state.max_delay)

    def call(self, fn: cabc.Callable[..., R], args: t.Any, kwargs: t.Any) -> R:
        while True:
            block = self.block()
            try:
                with block:
                    return fn(*args, **kwargs)
            except Exception as e:
                delay = self.next_delay(block, e)
            time.sleep(delay)

    async def call_async(
        self,
        fn: cabc.Callable[..., cabc.Awaitable[R]],
        args: t.Any,
        kwargs: t.Any,
    ) -> R:
        while True:
            block = self.block()
            try:
                with block:
                    return await fn(*args, **kwargs)
            except Exception as e:
                delay = self.next_delay(block, e)
            await asyncio.sleep(delay)


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
