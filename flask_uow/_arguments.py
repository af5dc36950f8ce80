"""The arguments of declared transactions, checked where they are given."""

from __future__ import annotations

import collections.abc as cabc
import inspect
import typing as t

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
        f"'transaction()' got unexpected arguments {names}. It takes 'durable',"
        " 'isolation_level' and 'sqlite_begin'."
    )
