"""The transaction methods of :class:`~flask_uow.UnitOfWork`: declared
transactions, on_commit callbacks, and what decides a unit's commit.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import typing as t

import sqlalchemy.orm as orm
from flask import Flask

from ._arguments import check_isolation_level
from ._arguments import check_retries
from ._arguments import transaction_argument_error
from ._sqlite import check_begin_mode
from ._state import CommitVeto
from ._state import RetryClassifier
from ._state import State
from ._transaction import callback_list
from ._transaction import Retrier
from ._transaction import run_in_transactions
from ._transaction import TransactionBlock
from ._unit import Unit
from .testing import ISOLATION

P = t.ParamSpec("P")
R = t.TypeVar("R")


class TransactionMethods:
    """Declared transactions and the commit decision of a unit of work."""

    _commit_veto: CommitVeto
    _retry_classifier: RetryClassifier

    if t.TYPE_CHECKING:

        def _state(self, app: Flask | None = None) -> tuple[Flask, State]: ...

    def _unit(self) -> Unit:
        app, state = self._state()
        return state.unit(app)

    def mark_rollback_only(self) -> None:
        """Make the current transaction roll back at its end instead of
        committing, without raising an exception.

        Inside :meth:`transaction` or :meth:`transactional` this applies to the
        innermost one (for a nested one, only its savepoint is rolled back).
        Outside of them it applies to the end of the unit of work: the
        request's work is rolled back at its end instead of committed. Explicit
        commits are not affected: a later ``uow.session.commit()`` still
        commits.

        :raise RuntimeError: There is no application context.
        """
        unit = self._unit()
        if unit.frames:
            unit.frames[-1].rollback_only = True
        else:
            unit.rollback_only = True

    def no_autocommit(self, view: cabc.Callable[P, R]) -> cabc.Callable[P, R]:
        """Decorate a view whose work must never be committed at the end of the
        request; it is rolled back instead. Explicit commits inside the view are
        not affected. Works on ``async def`` views too.

        :param view: The view function.
        """
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> t.Any:
                self._unit().no_autocommit = True
                return await view(*args, **kwargs)

            return t.cast("cabc.Callable[P, R]", async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self._unit().no_autocommit = True
            return view(*args, **kwargs)

        return wrapper

    def transaction(
        self,
        *,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
        **unsupported: t.Any,
    ) -> t.ContextManager[orm.Session]:
        """A block that runs in a transaction of the current unit of work, and
        yields its session.

        The outermost block commits when it ends normally, and rolls back and
        re-raises when an exception escapes it. A block inside another one is a
        SAVEPOINT: an exception escaping it rolls back only the savepoint, and
        the outer transaction can still commit.

        Beginning an outermost block is a commit point: work the unit of work
        did before it (a ``before_request`` hook that loaded the current user,
        say) is committed first, so that the block starts a fresh transaction
        in which an isolation level and retries can apply. This holds with
        ``UOW_AUTOCOMMIT`` off and outside requests too. The earlier work is
        rolled back instead if the unit of work is already marked to roll back
        (after an exception, :meth:`mark_rollback_only` or in a
        :meth:`no_autocommit` view).

        .. code-block:: python

            with uow.transaction() as session:
                session.add(Order(...))

        A block cannot be re-run, so it takes no ``retries``; decorate a
        function with :meth:`transactional` to retry.

        The returned object holds only the arguments: it can be made outside
        an application context (at import time, say) and entered any number
        of times, in turn or inside itself, each entry a transaction of its
        own. Inside the block, ``uow.session.commit()``, ``rollback()`` and
        ``close()`` raise ``RuntimeError``.

        :param durable: Raise ``RuntimeError`` when the block is nested inside
            another transaction, instead of making it a savepoint: its commit is
            meant to be final.
        :param isolation_level: For example ``"SERIALIZABLE"``: the isolation
            level of this transaction only, on the connection of the
            ``"default"`` engine. Only for an outermost transaction.
        :param sqlite_begin: How the transaction begins on SQLite engines:
            ``"immediate"`` takes the write lock at once, waiting for it up to
            the busy timeout, so the transaction cannot fail later when it
            writes; ``"deferred"`` takes it at the first write, so readers
            never wait; ``"exclusive"`` also keeps readers out outside WAL
            mode. By default, each engine's ``sqlite_begin`` from
            :data:`UOW_ENGINES` (``"immediate"`` unless set). Other databases
            and nested transactions (savepoints) ignore it.
        :raise RuntimeError: When the block is entered: there is no
            application context, or *durable* or *isolation_level* was given
            to a nested transaction.
        :raise TransactionAbortedError: When the block ends: the database
            already aborted its transaction, or a nested block's savepoint
            could not be rolled back; nothing was committed.
        :raise TypeError: ``retries`` or another unknown argument was given.
        :raise ValueError: *isolation_level* is not an isolation level, or
            *sqlite_begin* not a begin mode.

        .. versionchanged:: 0.1
            Added *sqlite_begin*.
        """
        if unsupported:
            raise TypeError(transaction_argument_error(unsupported))
        level = check_isolation_level(isolation_level)
        begin = check_begin_mode(sqlite_begin)
        return TransactionBlock(self._state, durable, level, begin)

    @t.overload
    def transactional(self, fn: cabc.Callable[P, R], /) -> cabc.Callable[P, R]: ...

    @t.overload
    def transactional(
        self,
        fn: None = None,
        /,
        *,
        retries: int = 0,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
    ) -> cabc.Callable[[cabc.Callable[P, R]], cabc.Callable[P, R]]: ...

    def transactional(
        self,
        fn: t.Any = None,
        /,
        *,
        retries: int = 0,
        durable: bool = False,
        isolation_level: str | None = None,
        sqlite_begin: str | None = None,
    ) -> t.Any:
        """Decorate a function (a view, a blueprint's view, or any function
        called in an app context) so that each call runs in a transaction, as
        with :meth:`transaction`. Use it bare or with arguments. ``async def``
        functions are supported.

        On a view, the transaction commits when the view returns, before the
        response is built, so a failed commit reaches the app's error handlers
        like any exception raised by the view.

        .. code-block:: python

            @app.post("/transfers")
            @uow.transactional(retries=3, isolation_level="SERIALIZABLE")
            def transfer():
                ...

        :param retries: When the function or its commit raises an error that
            the retry classifier calls transient (see
            :func:`~flask_uow.is_transient_error`), roll back, wait, and call the
            function again, at most this many more times; then re-raise the
            last error. Only an outermost transaction is retried: a nested one
            lets the error reach the outermost. The wait before retry *n* is a
            random time up to ``UOW_RETRY_DELAY * 2 ** (n - 1)`` seconds, capped
            at ``UOW_RETRY_MAX_DELAY``. Retried functions must be safe to run
            again: keep side effects for :meth:`on_commit`.
        :param durable: See :meth:`transaction`.
        :param isolation_level: See :meth:`transaction`.
        :param sqlite_begin: See :meth:`transaction`.
        :raise TypeError: *fn* is not callable or is a generator function, or
            *retries* is not an int.
        :raise ValueError: *retries* is negative, *isolation_level* is not an
            isolation level, or *sqlite_begin* not a begin mode.
        :raise RuntimeError: When called: there is no application context, or
            *durable* or *isolation_level* was given to a nested transaction.
        """
        retries = check_retries(retries)
        level = check_isolation_level(isolation_level)
        begin = check_begin_mode(sqlite_begin)

        def decorate(fn: cabc.Callable[P, R]) -> cabc.Callable[P, R]:
            def retrier() -> Retrier:
                app, state = self._state()
                return Retrier(app, state, retries, durable, level, begin)

            return run_in_transactions(fn, retrier)

        if fn is not None:
            return decorate(fn)
        return decorate

    def on_commit(self, callback: cabc.Callable[[], object]) -> None:
        """Run *callback* (with no arguments) after the enclosing unit of work
        commits: the outermost :meth:`transaction` around this call, or, outside
        of one, the next commit of the session (in a request, the end-of-request
        commit). Use it for side effects that must not happen unless the data
        is saved, such as sending an email or enqueueing a task.

        Callbacks run in the order they were registered. They never run when
        the transaction rolls back; one registered inside a savepoint that rolls
        back is dropped. A callback that raises is logged with the app's logger
        and the others still run; the commit stands and the response is
        unchanged.

        A callback that writes should open its own :meth:`transaction`. Writes
        it makes without one join the unit of work's next transaction: in a
        request, they are committed or rolled back with the rest of the
        request's work, unless the request has already finished (callbacks of
        the end-of-request commit run after it), in which case they are rolled
        back when the session closes.

        :param callback: A function taking no arguments.
        :raise TypeError: *callback* is not callable.
        :raise RuntimeError: There is no application context.
        """
        if not callable(callback):
            raise TypeError(
                f"'on_commit' needs a function to call, not"
                f" {type(callback).__name__!r}. Pass the function itself, or a"
                " lambda or functools.partial to give it arguments."
            )
        app, state = self._state()
        session = state.session(app)  # The callback waits for its commit.
        isolation = session.info.get(ISOLATION)
        if isolation is not None:
            callback = isolation.recorded(callback)
        callback_list(state.unit(app)).append(callback)

    def retry_classifier(self, classifier: RetryClassifier) -> RetryClassifier:
        """Register the function that decides whether an error is transient,
        so that a transaction with ``retries`` runs again after it. It replaces
        :func:`~flask_uow.is_transient_error` for every app of this instance
        and can be used as a decorator; call the default from it to extend it.

        :param classifier: ``classifier(exc) -> bool``; ``True`` means retry.
        """
        if not callable(classifier):
            raise TypeError(
                f"'retry_classifier' needs a function taking the exception, not"
                f" {type(classifier).__name__!r}."
            )
        self._retry_classifier = classifier
        return classifier

    def commit_veto(self, veto: CommitVeto) -> CommitVeto:
        """Register the function that decides, from the response, whether a
        successful request must roll back instead of committing. It replaces
        :func:`~flask_uow.default_commit_veto` (which vetoes status 400 and
        above) for every app of this instance. Can be used as a decorator.

        The veto is asked only when nothing else already decided to roll back
        (an exception, :meth:`no_autocommit`, :meth:`mark_rollback_only`).

        :param veto: ``veto(response) -> bool``; ``True`` means "roll back".
        """
        if not callable(veto):
            raise TypeError(
                f"'commit_veto' needs a function taking the response, not"
                f" {type(veto).__name__!r}."
            )
        self._commit_veto = veto
        return veto
