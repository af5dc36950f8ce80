"""Test isolation: run an app's database work inside transactions that are
rolled back at the end of each test, even when the app commits.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import functools
import types
import typing as t

import sqlalchemy as sa
from flask import Flask

from ._changes import Change
from .signals import after_commit

if t.TYPE_CHECKING:
    import sqlalchemy.orm as orm

    from ._state import State
    from ._unit import Unit

#: Where a session made under isolation finds its :class:`Isolation`: a key
#: of its ``info``.
ISOLATION = "flask_uow.isolation"


@dataclasses.dataclass(frozen=True)
class CapturedTask:
    """A task that a unit of work enqueued through the outbox
    (:meth:`~flask_uow.UnitOfWork.enqueue`) and that committed, captured by
    :class:`Isolation` instead of published.

    .. versionadded:: 0.1
    """

    #: The outbox row's key: the task id (Celery) or job id (RQ) it gets.
    key: str
    #: The task's name: the Celery task name, or the RQ job function's
    #: dotted name.
    name: str
    #: The queue it would go to (``None``: the broker routes it).
    queue: str | None
    args: tuple[t.Any, ...]
    kwargs: dict[str, t.Any]
    runner: cabc.Callable[[], object] = dataclasses.field(repr=False, compare=False)

    def run(self) -> object:
        """Run the task in this process, as a worker would; its result."""
        return self.runner()


class Isolation:
    """Keep everything an app writes to its databases inside one outer
    transaction per engine, rolled back when the isolation ends.

    While it is active, every session of the app joins those transactions: a
    commit by the app (at the end of a request, in
    :meth:`~flask_uow.UnitOfWork.transaction`, or an explicit
    ``uow.session.commit()``) releases a SAVEPOINT instead of committing, so
    the test sees the data and later requests in the same test see it too. The
    :data:`~flask_uow.signals.after_commit` signal and the
    :meth:`~flask_uow.UnitOfWork.on_commit` callbacks still run when the app
    commits; :attr:`commits` records the change sets and :attr:`callbacks` the
    callbacks that ran.

    It works with any test framework; the pytest plugin's ``uow_isolation``
    fixture wraps it:

    .. code-block:: python

        class TransferTest(unittest.TestCase):
            def setUp(self):
                self.isolation = Isolation(app)
                self.isolation.start()
                self.addCleanup(self.isolation.stop)

    or, as a context manager, ``with Isolation(app) as isolation: ...``.

    :param app: An app set up with :meth:`flask_uow.UnitOfWork.init_app`.

    .. versionadded:: 0.1
    """

    def __init__(self, app: Flask) -> None:
        uow = app.extensions.get("uow")
        if uow is None:
            raise RuntimeError(
                f"The app {app.name!r} is not set up with flask_uow. Call"
                " 'uow.init_app(app)' before isolating its tests."
            )
        self.app = app
        self._state: State = uow._state(app)[1]
        #: The connection of each engine, by engine name, while active.
        self.connections: dict[str, sa.Connection] = {}
        #: The change set of each commit the app made that wrote something, in
        #: order (read-only requests commit too, with nothing to report).
        self.commits: list[list[Change]] = []
        #: The :meth:`~flask_uow.UnitOfWork.on_commit` callbacks that ran.
        self.callbacks: list[cabc.Callable[[], object]] = []
        #: The tasks that committed units enqueued, not published while the
        #: isolation is active; see :meth:`run_tasks`.
        self.tasks: list[CapturedTask] = []
        #: The units whose session was made under this isolation, still open.
        self._units: set[Unit] = set()
        self._saved_options: dict[str, t.Any] | None = None

    @property
    def changes(self) -> list[Change]:
        """Every change the app committed, across all its commits."""
        return [change for changes in self.commits for change in changes]

    def start(self) -> None:
        """Open a connection and a transaction on each engine and route the
        app's sessions to them.

        :raise RuntimeError: The app is already isolated, or a session of the
            app is open (start the isolation before using ``uow.session``).
        """
        state = self._state
        if ISOLATION in state.options.get("info", ()):
            raise RuntimeError(
                f"The app {self.app.name!r} is already isolated. Stop the"
                " current isolation first; isolations do not nest."
            )
        if state.live:
            raise RuntimeError(
                f"A session of the app {self.app.name!r} is already open, so it"
                " would not be isolated. Start the isolation before the test"
                " first uses 'uow.session'."
            )
        try:
            for name, engine in state.engines.items():
                connection = self.connections[name] = engine.connect()
                connection.begin()
        except BaseException:
            self._close_connections()
            raise
        after_commit.connect(self._record_commit, self.app)
        # Every session of the app joins the outer transactions from now on.
        self._saved_options = state.options
        state.options = {
            "bind": self.connections["default"],
            "engines": self.connections,
            "join_transaction_mode": "create_savepoint",
            "info": {ISOLATION: self},
        }
        state.opened.append(self._opened)
        state.ended.append(self._ended)

    def stop(self) -> None:
        """Close the app's open sessions, roll back everything written since
        :meth:`start`, and return the connections to their pools. Safe to call
        more than once.
        """
        state = self._state
        if self._saved_options is None:
            return
        state.options, self._saved_options = self._saved_options, None
        state.opened.remove(self._opened)
        state.ended.remove(self._ended)
        after_commit.disconnect(self._record_commit, self.app)
        try:
            units, self._units = self._units, set()
            for unit in units:
                unit.frames.clear()
                session, unit.session = unit.session, None
                if session is not None:
                    state.live -= 1
                    session.close()
        finally:
            self._close_connections()

    def _opened(self, unit: Unit, session: orm.Session) -> None:
        self._units.add(unit)

    def _ended(self, unit: Unit) -> None:
        self._units.discard(unit)

    def recorded(
        self, callback: cabc.Callable[[], object]
    ) -> cabc.Callable[[], object]:
        """Wrap an on_commit callback so that :attr:`callbacks` records it
        when it runs.
        """

        @functools.wraps(callback)
        def run() -> object:
            self.callbacks.append(callback)
            return callback()

        return run

    def run_tasks(self) -> int:
        """Run the captured :attr:`tasks` in this process, in the order they
        were enqueued, and clear the list; tasks they enqueue run too. Their
        database work is isolated like the rest of the test's.

        :return: How many tasks ran.
        """
        ran = 0
        while self.tasks:
            tasks, self.tasks = self.tasks, []
            for task in tasks:
                with self.app.app_context():
                    task.run()
                ran += 1
        return ran

    def _close_connections(self) -> None:
        connections, self.connections = self.connections, {}
        for connection in connections.values():
            connection.close()  # Rolls back the outer transaction.

    def _record_commit(
        self, sender: Flask, *, changes: list[Change], **extra: t.Any
    ) -> None:
        if changes:
            self.commits.append(changes)

    def __enter__(self) -> Isolation:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()
