"""The configuration of read replicas: the ``replicas`` lists of
``UOW_ENGINES`` entries, the ``UOW_REPLICA_*`` keys, and the replica engines.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import sqlalchemy as sa

from ._config import finite

DEFAULTS: dict[str, t.Any] = {
    "UOW_REPLICA_MAX_LAG": 30.0,
    "UOW_REPLICA_WAIT": 0.0,
    "UOW_REPLICA_BACKOFF": 10.0,
    "UOW_REPLICA_WINDOW": 2.0,
    "UOW_REPLICA_COOKIE": "uow_ryw",
}


def split_replicas(value: t.Any) -> tuple[t.Any, dict[str, list[t.Any]]]:
    """Take the ``replicas`` lists out of the ``UOW_ENGINES`` entries, so that
    the rest of each entry goes to ``create_engine`` as before.
    """
    if not isinstance(value, cabc.Mapping):
        return value, {}
    engines: dict[t.Any, t.Any] = {}
    replicas: dict[str, list[t.Any]] = {}
    for name, entry in value.items():
        if isinstance(entry, cabc.Mapping) and "replicas" in entry:
            entry = dict(entry)
            listed = entry.pop("replicas")
            if isinstance(listed, (str, bytes, sa.URL)) or not isinstance(
                listed, cabc.Sequence
            ):
                raise TypeError(
                    f"UOW_ENGINES[{name!r}]['replicas'] must be a list of database"
                    f" URLs, not {type(listed).__name__!r}. For example"
                    " 'replicas': ['postgresql+psycopg://app@replica1/app']."
                )
            if listed:
                replicas[name] = list(listed)
        engines[name] = entry
    return engines, replicas


def check_config(config: cabc.Mapping[str, t.Any]) -> None:
    """Validate the ``UOW_REPLICA_*`` keys."""
    for key in ("UOW_REPLICA_MAX_LAG", "UOW_REPLICA_WAIT"):
        _check_seconds(config, key, none_ok=key == "UOW_REPLICA_MAX_LAG")
    for key in ("UOW_REPLICA_BACKOFF", "UOW_REPLICA_WINDOW"):
        _check_seconds(config, key)
    name = config["UOW_REPLICA_COOKIE"]
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"'UOW_REPLICA_COOKIE' must be a cookie name, not {name!r}. For"
            " example app.config['UOW_REPLICA_COOKIE'] = 'uow_ryw'."
        )


def _check_seconds(
    config: cabc.Mapping[str, t.Any], key: str, none_ok: bool = False
) -> None:
    value = config[key]
    if value is None and none_ok:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        extra = ", or None for no limit" if none_ok else ""
        raise TypeError(
            f"{key!r} must be a number of seconds{extra}, not {value!r}. For"
            f" example app.config[{key!r}] = {DEFAULTS[key]!r}."
        )
    if not finite(value):
        extra = " (or None for no limit)" if none_ok else ""
        raise ValueError(
            f"{key!r} is not a finite number of seconds. Use a number from 0"
            f" up{extra}, for example {DEFAULTS[key]!r}."
        )
    if value < 0:
        raise ValueError(f"{key!r} is negative ({value!r}). Use 0 or more.")


def create_engines(
    engines: cabc.Mapping[str, sa.Engine],
    listed: cabc.Mapping[str, list[t.Any]],
    make_engine: cabc.Callable[[str, t.Any], sa.Engine],
    options: cabc.Mapping[str, t.Any],
) -> dict[str, list[sa.Engine]]:
    """Create the replica engines of each engine; if one fails, dispose the
    ones already created.
    """
    created: dict[str, list[sa.Engine]] = {}
    try:
        for name, entries in listed.items():
            if name not in engines:  # pragma: no cover - create_engines raised
                continue
            for i, entry in enumerate(entries):
                label = f"UOW_ENGINES[{name!r}]['replicas'][{i}]"
                engine = make_engine(label, _inherit(options.get(name), entry))
                created.setdefault(name, []).append(engine)
                _check_backend(label, engines[name], engine)
                _read_only(engine)
    except BaseException:
        for engine in (e for group in created.values() for e in group):
            engine.dispose()
        raise
    return created


def _inherit(primary: t.Any, entry: t.Any) -> t.Any:
    if not isinstance(primary, cabc.Mapping) or not isinstance(
        entry, (str, sa.URL, cabc.Mapping)
    ):
        return entry
    shared = {k: v for k, v in primary.items() if k not in ("url", "replicas")}
    if isinstance(entry, cabc.Mapping):
        return {**shared, **entry}
    return {**shared, "url": entry}


def _check_backend(label: str, primary: sa.Engine, replica: sa.Engine) -> None:
    if replica.dialect.name != primary.dialect.name:
        raise ValueError(
            f"{label} is a {replica.dialect.name!r} database, but its primary is"
            f" {primary.dialect.name!r}. List replicas of that database only."
        )


def _read_only(engine: sa.Engine) -> None:
    """Make every transaction on a replica engine READ ONLY, and leave the
    server's session as it found it: behind a transaction pooler the server
    connection is shared with the primary's clients.

    psycopg 3 and psycopg2 begin each transaction themselves: told once per
    connection (a setting of the driver's connection object, not of the
    server), each of their ``BEGIN`` statements says ``READ ONLY``. Other
    PostgreSQL drivers get ``SET TRANSACTION READ ONLY`` at the start of each
    transaction. SQLite has no server to share: ``PRAGMA query_only`` once.
    """
    if engine.dialect.name == "postgresql":
        if engine.dialect.driver in BEGIN_READ_ONLY_DRIVERS:
            sa.event.listen(engine, "connect", _driver_read_only)
        else:
            read_only_per_transaction(engine)
    elif engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _query_only)


#: PostgreSQL drivers that send ``BEGIN READ ONLY`` when their connection's
#: ``read_only`` (psycopg) or ``readonly`` (psycopg2) attribute is set.
BEGIN_READ_ONLY_DRIVERS = frozenset({"psycopg", "psycopg2"})


def _driver_read_only(dbapi_connection: t.Any, record: t.Any) -> None:
    # The attribute may only change between transactions; a new connection
    # has none open, or only SQLAlchemy's first-connect queries.
    dbapi_connection.rollback()
    if hasattr(dbapi_connection, "pgconn"):  # psycopg 3
        dbapi_connection.read_only = True
    else:  # psycopg2
        dbapi_connection.readonly = True


def read_only_per_transaction(engine: sa.Engine) -> None:
    """Begin every transaction of *engine* with ``SET TRANSACTION READ
    ONLY``, which lasts until the transaction ends.
    """

    @sa.event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        # An AUTOCOMMIT connection (the replica status query) has no
        # transaction to set.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def _query_only(dbapi_connection: t.Any, record: t.Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()
    dbapi_connection.commit()
