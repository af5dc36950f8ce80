"""The ``pooler`` setting of a ``UOW_ENGINES`` entry: what an engine behind an
external connection pooler (PgBouncer, pgcat, Supavisor, RDS Proxy) in
transaction mode must not do.

Such a pooler hands each transaction of a client connection to whichever
server connection is free, so nothing may outlive a transaction on the
server: no session setting, and no prepared statement, which the next
transaction on that server connection may belong to another client. flask_uow
itself keeps every statement it sends transaction-scoped on every engine; the
setting turns off what the driver does per connection: psycopg 3 prepares a
statement on its sixth execution (``prepare_threshold``). psycopg2 prepares
nothing.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

#: The accepted values; the first is the default.
POOLERS = ("session", "transaction")


def pop_pooler(key: str, options: dict[str, t.Any], url: sa.URL) -> str:
    """Take ``pooler`` out of the ``create_engine`` arguments of the entry
    *key*, check it, and for ``"transaction"`` turn off the driver's
    automatic prepared statements in a copy of ``connect_args``.

    :return: The setting, ``"session"`` or ``"transaction"``.
    """
    value = options.pop("pooler", "session")
    if not isinstance(value, str) or value not in POOLERS:
        raise ValueError(
            f"{key}['pooler'] is {value!r}. Use 'transaction' for an engine"
            " whose URL reaches the database through a pooler in transaction"
            " mode (PgBouncer's pool_mode = transaction, pgcat, Supavisor, RDS"
            " Proxy), or 'session' (the default) for a direct connection or a"
            " pooler in session mode."
        )
    if value == "transaction" and _driver(url) == "psycopg":
        connect_args = dict(options.get("connect_args") or {})
        threshold = connect_args.setdefault("prepare_threshold", None)
        if threshold is not None:
            raise ValueError(
                f"{key} sets 'pooler': 'transaction' and"
                f" 'connect_args': {{'prepare_threshold': {threshold!r}}}, but"
                " statements prepared on a server connection that a transaction"
                " pooler shares fail or run another client's statement. Remove"
                " 'prepare_threshold'; the pooler setting turns it off."
            )
        options["connect_args"] = connect_args
    return value


def _driver(url: sa.URL) -> str:
    """The driver SQLAlchemy uses for *url*, also when the URL names none."""
    if url.get_backend_name() != "postgresql":
        return url.get_driver_name()
    try:
        return str(url.get_dialect().driver)
    except Exception:  # An unknown driver: create_engine will say so.
        return url.get_driver_name()
