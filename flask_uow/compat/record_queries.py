"""The statements of the current unit of work, recorded when
``SQLALCHEMY_RECORD_QUERIES`` (or ``UOW_RECORD_QUERIES``) is on.
"""

from __future__ import annotations

import dataclasses
import typing as t

from .. import get_recorded_queries as _recorded


@dataclasses.dataclass(frozen=True)
class _QueryInfo:
    """A recorded statement, with Flask-SQLAlchemy's fields."""

    #: The SQL, with parameter placeholders.
    statement: str | None
    #: The parameter sets it ran with: a list of one for a single execution.
    parameters: list[t.Any]
    #: When it was sent and when the driver returned (``time.perf_counter``).
    start_time: float
    end_time: float
    #: ``"path/file.py:line (function)"`` of the code that ran it.
    location: str

    @property
    def duration(self) -> float:
        """How long it took, in seconds."""
        return self.end_time - self.start_time


def get_recorded_queries() -> list[_QueryInfo]:
    """The statements the current unit of work has run, when
    ``SQLALCHEMY_RECORD_QUERIES`` is on; see
    :func:`flask_uow.get_recorded_queries` for flask_uow's own records.

    :raise RuntimeError: There is no application context.
    """
    return [
        _QueryInfo(
            r.statement,
            r.parameters if isinstance(r.parameters, list) else [r.parameters],
            r.start_time,
            r.end_time,
            r.location,
        )
        for r in _recorded()
    ]
