"""The outbox methods of :class:`~flask_uow.UnitOfWork`: enqueue a
background task in the unit of work, and run a task's body exactly once.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import typing as t
import weakref

from flask import Flask
from flask.globals import _cv_app

from ._outbox import current_task_key
from ._outbox import logger
from ._outbox import Outbox
from ._state import State
from ._transaction import TransactionBlock

P = t.ParamSpec("P")
R = t.TypeVar("R")


class OutboxMethods:
    """Background tasks through the transactional outbox."""

    _outboxes: weakref.WeakKeyDictionary[Flask, Outbox]
    _states: weakref.WeakKeyDictionary[Flask, State]

    if t.TYPE_CHECKING:

        def _state(self, app: Flask | None = None) -> tuple[Flask, State]: ...

    def _outbox(self) -> Outbox:
        app = self._state()[0]
        box = self._outboxes.get(app)
        if box is None:
            raise RuntimeError(
                f"The outbox of the app {app.name!r} is off. Set"
                " app.config['UOW_OUTBOX'] = True and"
                " app.config['UOW_OUTBOX_BROKER'] (a CeleryBroker or RQBroker)"
                " before 'init_app' to enqueue tasks through it."
            )
        return box

    def enqueue(self, task: t.Any, /, *args: t.Any, **kwargs: t.Any) -> str:
        """Enqueue a background task in the current unit of work: one row in
        the outbox table, written in the unit's own transaction, so the task
        is published if and only if the unit commits. Right after the commit
        it is published and marked sent; if that fails (the process died, the
        broker is down) ``flask uow relay`` publishes it. See :doc:`tasks`.

        Inside a savepoint (a nested :meth:`transaction`), the row is
        discarded if the savepoint rolls back.

        :param task: A Celery task, or with RQ a job function defined at the
            top level of a module (or its dotted name).
        :param args: The task's arguments; each must be JSON-serialisable.
        :param kwargs: The task's keyword arguments, likewise.
        :return: The row's key: the Celery task id or RQ job id it is
            published with.
        :raise TypeError: An argument cannot be stored as JSON (the message
            names it), or *task* is not something the broker can publish.
        :raise RuntimeError: There is no application context, or the outbox
            is off (``UOW_OUTBOX``).

        .. versionadded:: 0.1
        """
        return self._outbox().enqueue(task, args, kwargs)

    def once(self, fn: cabc.Callable[P, R]) -> cabc.Callable[P, R | None]:
        """Decorate a task's body so that its database effects apply once,
        however often the task is delivered.

        Each call runs as a :meth:`transaction` that first records the running
        task's key (the Celery task id or RQ job id, which the outbox sets to
        its row's key) in ``uow_processed``. If a committed run already
        recorded it, the call is a redelivery: it is logged and returns
        ``None`` without running *fn*. Otherwise *fn* runs, and its writes and
        the key commit together or not at all. Two runs of one key at the
        same time are serialised by the key's primary key.

        It runs in the current application context or, outside one, in a
        context of the one app this extension is set up on. Called outside a
        task (no key), *fn* runs in a plain transaction. Effects outside the
        database (an email, an HTTP call) are not covered: see :doc:`tasks`.

        Put it under the broker's decorator (``@celery.task`` above it).

        :param fn: The task's body.

        .. versionadded:: 0.1
        """
        name = f"{fn.__module__}.{fn.__qualname__}"

        def run(args: t.Any, kwargs: t.Any) -> R | None:
            box = self._outbox()
            key = current_task_key()
            with TransactionBlock(self._state, False, None) as session:
                if key is not None and not box.claim(session, key, name):
                    logger.info(
                        "flask_uow: task %s (%s) was already processed; skipped.",
                        key,
                        name,
                    )
                    return None
                return fn(*args, **kwargs)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            if _cv_app.get(None) is not None:
                return run(args, kwargs)
            apps = list(self._states)
            if len(apps) != 1:
                raise RuntimeError(
                    f"'@uow.once' on {name!r} ran outside an application context,"
                    f" and this 'UnitOfWork' is set up on {len(apps)} apps, so it"
                    " cannot tell which to use. Push the app's context in the"
                    " worker (with app.app_context(): ...)."
                )
            with apps[0].app_context():
                return run(args, kwargs)

        return wrapper
