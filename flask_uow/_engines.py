"""Engines from ``UOW_ENGINES``, and the session that routes statements to them."""

from __future__ import annotations

import collections.abc as cabc
import os
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm

from ._config import check_dialect_levels
from ._config import check_engine_options
from ._config import check_url
from ._config import describe_url
from ._config import scrub
from ._config import secrets_of
from ._forks import track
from ._pooler import pop_pooler
from ._sqlite import configure
from ._sqlite import is_configurable
from ._sqlite import pop_settings

_URL_HELP = (
    "Write it as 'dialect+driver://user:password@host/dbname', for example"
    " 'sqlite:///app.db' or 'postgresql+psycopg://user@localhost/app'."
)


def create_engines(value: t.Any, instance_path: str) -> dict[str, sa.Engine]:
    """Create one engine per entry of the ``UOW_ENGINES`` config value.

    Nothing connects here; a pool opens its first connection when a session
    first needs it. If one entry is invalid, the engines already created are
    disposed before the error propagates.
    """
    if value is None:
        raise RuntimeError(
            "'UOW_ENGINES' is not set. Set it before calling 'init_app', for"
            " example app.config['UOW_ENGINES'] = {'default': 'sqlite:///app.db'}."
        )
    if not isinstance(value, cabc.Mapping):
        raise TypeError(
            "'UOW_ENGINES' must be a dict that maps engine names to database URLs,"
            f" not {type(value).__name__!r}. For example"
            " {'default': 'sqlite:///app.db'}."
        )
    if "default" not in value:
        raise RuntimeError(
            "'UOW_ENGINES' has no 'default' engine. Add one, for example"
            " app.config['UOW_ENGINES']['default'] = 'sqlite:///app.db'; other"
            " names are extra engines selected with a table's 'bind_key'."
        )
    engines: dict[str, sa.Engine] = {}
    try:
        for name, options in value.items():
            engines[name] = _create_engine(name, options, instance_path)
    except BaseException:
        for engine in engines.values():
            engine.dispose()
        raise
    return engines


def _create_engine(
    name: str, value: t.Any, instance_path: str, key: str | None = None
) -> sa.Engine:
    key = key or f"UOW_ENGINES[{name!r}]"
    if isinstance(value, (str, sa.URL)):
        options: dict[str, t.Any] = {"url": value}
    elif isinstance(value, cabc.Mapping):
        options = dict(value)
        if "url" not in options:
            raise ValueError(
                f"{key} is a dict without a 'url' key. Add the database URL as"
                f" 'url' beside the other 'create_engine' arguments. {_URL_HELP}"
            )
    else:
        raise TypeError(
            f"{key} must be a URL string or a dict of 'create_engine' arguments"
            f" with a 'url' key, not {type(value).__name__!r}. {_URL_HELP}"
        )
    raw = options.pop("url")
    url = _parse_url(raw)
    if url is None:
        # Raised outside the parser's except clause: its message, kept in
        # __context__, may repeat part of the password.
        raise ValueError(f"{key} is not a valid database URL. {_URL_HELP}")
    url = check_url(key, raw, url)
    sqlite = pop_settings(key, options, url)
    check_engine_options(key, url, options)
    pop_pooler(key, options, url)
    url, in_memory = _sqlite_defaults(url, options, instance_path)
    engine = _engine_or_problem(url, options)
    if isinstance(engine, str):
        raise ValueError(
            f"{key} ({describe_url(url)}) could not be turned into an engine:"
            f" {scrub(engine, secrets_of(raw, url, options))}. Check the dialect"
            " and driver names, install the driver package, and pass only"
            " arguments that 'sqlalchemy.create_engine' accepts."
        )
    try:
        check_dialect_levels(key, engine, options)
    except ValueError:
        engine.dispose()
        raise
    if is_configurable(engine):
        configure(engine, sqlite)
    if not in_memory:
        # An in-memory database lives in the process's memory, which a child
        # gets a copy of; a new connection there would find it empty.
        track(engine)
    return engine


def _parse_url(raw: t.Any) -> sa.URL | None:
    try:
        return sa.make_url(raw)
    except (sa_exc.ArgumentError, TypeError, ValueError):
        return None


def _engine_or_problem(url: sa.URL, options: dict[str, t.Any]) -> sa.Engine | str:
    """The engine, or what ``create_engine`` said was wrong (nothing connects
    yet, so every error is a configuration error). The message is returned
    rather than chained, since it may repeat an argument's value.
    """
    try:
        return sa.create_engine(url, **options)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _sqlite_defaults(
    url: sa.URL, options: dict[str, t.Any], instance_path: str
) -> tuple[sa.URL, bool]:
    """Apply the SQLite conventions of Flask extensions, and tell whether
    the database is in memory.

    A relative database file is placed in the app's instance folder, and an
    in-memory database is shared by every thread of the process (one
    connection, ``StaticPool``) so that all requests see the same data.
    """
    if url.get_backend_name() != "sqlite":
        return url, False
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        options.setdefault("poolclass", sa.StaticPool)
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        return url, True
    if database.startswith("file:") or os.path.isabs(database):
        return url, False
    os.makedirs(instance_path, exist_ok=True)
    return url.set(database=os.path.join(instance_path, database)), False


def same_engine(known: t.Any, engine: sa.Engine) -> bool:
    """Whether *engine* is *known*, or a copy of it made with
    ``execution_options()`` that shares its pool (as an app may pass to a
    session itself).
    """
    return known is engine or getattr(known, "pool", None) is engine.pool


def bind_key_of(table: sa.Table) -> str | None:
    """The ``bind_key`` of a table: its own ``info``, else its metadata's."""
    key = table.info.get("bind_key")
    if key is None:
        key = table.metadata.info.get("bind_key")
    return t.cast("str | None", key)


def _table_of(mapper: t.Any, clause: t.Any) -> sa.Table | None:
    if mapper is not None:
        selectable = sa.inspect(mapper).local_table
        if isinstance(selectable, sa.Table):
            return selectable
    if isinstance(clause, sa.Table):
        return clause
    if isinstance(clause, sa.sql.expression.UpdateBase):
        table = getattr(clause, "table", None)
        return table if isinstance(table, sa.Table) else None
    if isinstance(clause, sa.Select):
        for from_ in clause.get_final_froms():
            table = _first_table(from_)
            if table is not None:
                return table
    return None


def _first_table(from_: t.Any) -> sa.Table | None:
    """The first table of a FROM item: itself, or the leftmost of a join."""
    if isinstance(from_, sa.Table):
        return from_
    if isinstance(from_, sa.Join):
        left = _first_table(from_.left)
        return left if left is not None else _first_table(from_.right)
    return None


class RoutingSession(orm.Session):
    """The session of a unit of work, bound to the ``default`` engine: it
    sends statements on a table with a ``bind_key`` to the engine of that
    name, may replace each engine by the one the unit uses for it (a replica,
    or a SQLite engine's copy that begins transactions in the unit's mode),
    and refuses to end a transaction that a ``uow.transaction()`` block owns.
    """

    #: Replaces an engine by the one the unit uses for it (a replica).
    uow_route: cabc.Callable[[sa.Engine], sa.Engine] | None = None
    #: The SQLite begin modes of the app (``_sqlite.BeginModes``), if any.
    uow_begin_modes: t.Any = None
    #: How the session's next transaction begins on SQLite engines (see
    #: ``_sqlite.BeginModes``); ``None`` for deferred.
    uow_begin_mode: str | None = None
    #: The bind key of each mapper's table, as statements find it; shared by
    #: the sessions of one sessionmaker (see :func:`bind_key_cache`).
    _uow_keys: dict[t.Any, str | None] = {}

    def __init__(
        self,
        *,
        engines: cabc.Mapping[str, sa.Engine | sa.Connection],
        uow_unit: t.Any = None,
        **kwargs: t.Any,
    ):
        self._uow_engines = engines
        #: The flask_uow unit of work this session belongs to.
        self.uow_unit = uow_unit
        super().__init__(**kwargs)

    def get_bind(
        self,
        mapper: t.Any = None,
        *,
        clause: t.Any = None,
        bind: t.Any = None,
        **kwargs: t.Any,
    ) -> sa.Engine | sa.Connection:
        """Return the engine for a statement, honouring table bind keys."""
        if bind is None:
            if mapper is not None:
                keys = self._uow_keys
                if mapper in keys:
                    key = keys[mapper]
                else:
                    key = keys[mapper] = _bind_key(mapper, None)
            else:
                key = _bind_key(None, clause)
            if key is not None:
                try:
                    found = self._uow_engines[key]
                except KeyError:
                    table = _table_of(mapper, clause)
                    raise sa_exc.UnboundExecutionError(
                        f"Table {table.name!r} has bind_key {key!r}, but"  # type: ignore[union-attr]
                        f" 'UOW_ENGINES' has no engine named {key!r}. Add"
                        f" UOW_ENGINES[{key!r}] = '<database URL>' to the config,"
                        " or correct the table's bind_key."
                    ) from None
                return self._uow_routed(found)
        return self._uow_routed(
            super().get_bind(mapper, clause=clause, bind=bind, **kwargs)
        )

    def _uow_routed(self, bind: sa.Engine | sa.Connection) -> sa.Engine | sa.Connection:
        # A replica for the unit of a safe request.
        if self.uow_route is not None and isinstance(bind, sa.Engine):
            return self.uow_route(bind)
        return bind

    def uow_describe(self, connection: sa.Connection) -> tuple[str | None, str]:
        """The ``UOW_ENGINES`` name of the engine *connection* belongs to, and
        its role: ``"primary"`` or ``"replica"``.
        """
        for name, bind in self._uow_engines.items():
            if bind is connection or same_engine(bind, connection.engine):
                return name, "primary"
        replicas = getattr(self.uow_route, "replicas", None)
        if replicas is not None:
            label = replicas.label_of(connection.engine)
            if label is not None:
                return t.cast("tuple[str | None, str]", label)
        return None, "primary"

    def commit(self) -> None:
        """Commit, unless a ``uow.transaction()`` block is open.

        :raise RuntimeError: Called inside a block or transactional function.
        """
        if self.uow_unit is not None and self.uow_unit.frames:
            _refuse_inside_block("commit")
        super().commit()

    def rollback(self) -> None:
        """Roll back, unless a ``uow.transaction()`` block is open.

        :raise RuntimeError: Called inside a block or transactional function.
        """
        if self.uow_unit is not None and self.uow_unit.frames:
            _refuse_inside_block("rollback")
        super().rollback()

    def close(self) -> None:
        """Close, unless a ``uow.transaction()`` block is open.

        :raise RuntimeError: Called inside a block or transactional function.
        """
        if self.uow_unit is not None and self.uow_unit.frames:
            _refuse_inside_block("close")
        super().close()


def bind_key_cache(factory: orm.sessionmaker[orm.Session]) -> None:
    """Give the sessions of *factory* a bind-key cache of their own (a
    sessionmaker makes a subclass of its session class).
    """
    factory.class_._uow_keys = {}  # type: ignore[attr-defined]


def _bind_key(mapper: t.Any, clause: t.Any) -> str | None:
    table = _table_of(mapper, clause)
    return None if table is None else bind_key_of(table)


def _refuse_inside_block(method: str) -> t.NoReturn:
    # The unit's stack of open blocks; flask_uow pops a block's frame before
    # it commits or rolls back the block itself.
    raise RuntimeError(
        f"'uow.session.{method}()' was called inside a"
        " 'uow.transaction()' block or a '@uow.transactional' function,"
        " where it would end the block's transaction behind its back."
        " Leave the block to commit, raise an exception to roll it back,"
        " or call 'uow.mark_rollback_only()' to roll it back without one."
    )
