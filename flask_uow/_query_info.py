"""What query insight knows about a statement: records, call sites, the
N+1 warning, and the ``UOW_*`` settings that turn it on.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing as t

import sqlalchemy.orm as orm
from flask import current_app
from flask import Flask
from flask import has_app_context
from flask import has_request_context
from flask import request

_MODES = ("warn", "raise", "off")

#: Transaction control: neither recorded, counted nor commented.
CONTROL = re.compile(
    r"\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|END"
    r"|(START|SET|PREPARE)\s+TRANSACTION)\b",
    re.IGNORECASE,
)

#: Top-level modules whose frames are not a statement's call site.
_LIBRARIES = frozenset(
    {
        "flask_uow",
        "sqlalchemy",
        "flask",
        "werkzeug",
        "blinker",
        "asgiref",
        "jinja2",
        "opentelemetry",
        "wrapt",
    }
)
#: Whether the code of each file is library code, by file name.
_skipped_files: dict[str, bool] = {}


class NPlusOneWarning(UserWarning):
    """A unit of work ran the same statement, with different parameters, more
    times than ``UOW_N_PLUS_ONE_THRESHOLD``: typically a relationship loaded
    lazily in a loop. Raised as an exception instead when ``UOW_N_PLUS_ONE``
    is ``"raise"``. Filter it like any warning::

        warnings.filterwarnings("ignore", category=flask_uow.NPlusOneWarning)

    .. versionadded:: 0.1
    """


class UnitQueries:
    """What one unit of work ran: kept on the unit, freed with it."""

    __slots__ = ("records", "shapes", "totals")

    def __init__(self, record: bool) -> None:
        self.records: list[QueryRecord] | None = [] if record else None
        #: How many times each SQL text ran, for N+1 detection.
        self.shapes: dict[str, int] = {}
        #: Per engine name: statements and seconds.
        self.totals: dict[str, list[float]] = {}


@dataclasses.dataclass(slots=True)
class QueryRecord:
    """A statement a unit of work ran, as recorded with
    ``UOW_RECORD_QUERIES`` or counted by
    :meth:`~flask_uow.UnitOfWork.assert_max_queries`. The first six fields
    are those of Flask-SQLAlchemy's recorded queries.

    .. versionadded:: 0.1
    """

    #: The SQL sent to the database, with parameter placeholders.
    statement: str
    #: The parameters sent with it, in the driver's format (a list of them
    #: for a statement run with many parameter sets).
    parameters: t.Any
    #: When the statement was sent, from :func:`time.perf_counter`.
    start_time: float
    #: When the driver returned, from :func:`time.perf_counter`.
    end_time: float
    #: ``"path/to/file.py:12 (function)"``: the innermost frame outside
    #: flask_uow, SQLAlchemy, Flask, Werkzeug, Jinja, blinker, asgiref and the
    #: standard library, or ``"<unknown>"``.
    location: str
    #: The name of the engine in ``UOW_ENGINES``.
    engine: str
    #: The rows the statement returned or changed, when the driver knows
    #: (``None`` when it reports -1).
    rowcount: int | None
    #: Which server of the engine ran it: ``"primary"``, or ``"replica"`` for
    #: a read replica of it (see :doc:`replicas`).
    role: str = "primary"

    @property
    def duration(self) -> float:
        """The time the statement took, in seconds."""
        return self.end_time - self.start_time


@dataclasses.dataclass
class Settings:
    record: bool
    n_plus_one: str
    threshold: int
    server_timing: bool
    slow_ms: float | None
    slow_parameters: bool

    @property
    def always(self) -> bool:
        """Whether the listeners are needed for every statement."""
        return (
            self.record
            or self.n_plus_one != "off"
            or self.server_timing
            or self.slow_ms is not None
        )


def read_settings(app: Flask) -> Settings:
    """Set the defaults of the ``UOW_*`` query-insight keys and check them."""
    config = app.config
    development = app.debug or app.testing
    config.setdefault("UOW_RECORD_QUERIES", development)
    config.setdefault("UOW_N_PLUS_ONE", "warn" if development else "off")
    config.setdefault("UOW_N_PLUS_ONE_THRESHOLD", 10)
    config.setdefault("UOW_SERVER_TIMING", False)
    config.setdefault("UOW_SLOW_QUERY_MS", None)
    config.setdefault("UOW_SLOW_QUERY_PARAMETERS", False)
    for key in ("UOW_RECORD_QUERIES", "UOW_SERVER_TIMING", "UOW_SLOW_QUERY_PARAMETERS"):
        if not isinstance(config[key], bool):
            raise TypeError(
                f"{key!r} must be True or False, not {type(config[key]).__name__!r}."
                f" For example app.config[{key!r}] = True."
            )
    mode = config["UOW_N_PLUS_ONE"]
    if mode not in _MODES:
        raise ValueError(
            f"'UOW_N_PLUS_ONE' must be 'warn', 'raise' or 'off', not {mode!r}."
            " Use 'raise' in test suites to fail on repeated statements."
        )
    threshold = config["UOW_N_PLUS_ONE_THRESHOLD"]
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError(
            "'UOW_N_PLUS_ONE_THRESHOLD' must be an int, not"
            f" {type(threshold).__name__!r}. For example 10: a unit of work may"
            " run the same statement 10 times before it is reported."
        )
    if threshold < 1:
        raise ValueError(
            f"'UOW_N_PLUS_ONE_THRESHOLD' must be 1 or more, not {threshold}. Set"
            " 'UOW_N_PLUS_ONE' to 'off' to turn the detection off."
        )
    slow = config["UOW_SLOW_QUERY_MS"]
    if slow is not None:
        if not isinstance(slow, (int, float)) or isinstance(slow, bool):
            raise TypeError(
                "'UOW_SLOW_QUERY_MS' must be a number of milliseconds or None,"
                f" not {type(slow).__name__!r}. For example 200."
            )
        if slow < 0:
            raise ValueError(
                f"'UOW_SLOW_QUERY_MS' is negative ({slow!r}). Use 0 or more, or"
                " None to log no statement."
            )
    return Settings(
        config["UOW_RECORD_QUERIES"],
        mode,
        threshold,
        config["UOW_SERVER_TIMING"],
        slow,
        config["UOW_SLOW_QUERY_PARAMETERS"],
    )


def _is_library(frame: types.FrameType) -> bool:
    name: str = frame.f_globals.get("__name__", "")
    top = name.partition(".")[0]
    return top in _LIBRARIES or top in sys.stdlib_module_names


def call_site() -> types.FrameType | None:
    """The innermost frame of the code that ran the statement. Asked for
    every recorded statement, so the answer for each file is kept.
    """
    frame: types.FrameType | None = sys._getframe(1)
    skipped = _skipped_files
    while frame is not None:
        filename = frame.f_code.co_filename
        skip = skipped.get(filename)
        if skip is None:
            skip = skipped[filename] = _is_library(frame)
        if not skip:
            return frame
        frame = frame.f_back
    return None


def describe(frame: types.FrameType | None) -> str:
    if frame is None:
        return "<unknown>"
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"


def where() -> str:
    if has_request_context():
        return f"{request.method} {request.path}"
    return "outside a request"


def lazy_relationship() -> str | None:
    """The relationship an ORM lazy load is loading, as ``"Class.attribute"``,
    if the statement being run is one: found on the stack, in the frames of
    SQLAlchemy's lazy loader. Asked only when a warning is given.
    """
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "sqlalchemy.orm.strategies":
            prop = getattr(frame.f_locals.get("self"), "parent_property", None)
            if isinstance(prop, orm.RelationshipProperty):
                return str(prop.class_attribute)
        frame = frame.f_back
    return None


def get_recorded_queries() -> list[QueryRecord]:
    """The statements the current unit of work has run so far, when
    ``UOW_RECORD_QUERIES`` is on for the current app; an empty list when it is
    off. The same as :attr:`UnitOfWork.recorded_queries
    <flask_uow.UnitOfWork.recorded_queries>`, named like Flask-SQLAlchemy's
    function.

    :raise RuntimeError: There is no application context, or the app is not
        set up with flask_uow.

    .. versionadded:: 0.1
    """
    if not has_app_context():
        raise RuntimeError(
            "'get_recorded_queries' needs an application context to know whose"
            " statements to return. Call it in a request or CLI command, or push"
            " a context with 'with app.app_context():'."
        )
    uow = current_app.extensions.get("uow")
    if uow is None:
        raise RuntimeError(
            f"The app {current_app.name!r} is not set up with flask_uow. Call"
            " 'uow.init_app(app)' in the app factory."
        )
    return t.cast("list[QueryRecord]", uow.recorded_queries)
