"""The query-insight methods of :class:`~flask_uow.UnitOfWork`."""

from __future__ import annotations

import typing as t

from flask import Flask

from ._query_info import QueryRecord
from ._recording import Insight
from ._state import State


class QueryMethods:
    """What a unit of work ran, and assertions on it."""

    _insight: Insight

    if t.TYPE_CHECKING:

        def _state(self, app: Flask | None = None) -> tuple[Flask, State]: ...

    @property
    def recorded_queries(self) -> list[QueryRecord]:
        """The statements the current unit of work has run so far, oldest
        first, when ``UOW_RECORD_QUERIES`` is on for the current app (an empty
        list when it is off). See :doc:`queries`.

        :raise RuntimeError: There is no application context.

        .. versionadded:: 0.1
        """
        app, state = self._state()
        return self._insight.recorded(app, state)

    def assert_max_queries(self, n: int) -> t.ContextManager[list[QueryRecord]]:
        """A block in which the apps of this instance may run at most *n*
        statements, across all units of work (each test-client request is
        one), with or without an application context. Transaction control
        (``BEGIN``, ``COMMIT``, ``SAVEPOINT``...) is not counted. It yields the
        list of the statements, filled as they run.

        .. code-block:: python

            with uow.assert_max_queries(2):
                client.get("/orders")

        :param n: The number of statements allowed.
        :raise TypeError: *n* is not an int.
        :raise ValueError: *n* is negative.
        :raise AssertionError: When the block ends, more statements ran; the
            message lists them, numbered, with their call sites.

        .. versionadded:: 0.1
        """
        return self._insight.expect(n, exact=False)

    def assert_num_queries(self, n: int) -> t.ContextManager[list[QueryRecord]]:
        """Like :meth:`assert_max_queries`, but exactly *n* statements must
        run in the block.

        .. versionadded:: 0.1
        """
        return self._insight.expect(n, exact=True)
