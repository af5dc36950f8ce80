"""The outbox's tables and how a task's arguments are stored in them."""

from __future__ import annotations

import datetime
import json
import typing as t

import sqlalchemy as sa

#: The outbox's tables, added to the default engine's entry of
#: ``uow.metadatas`` when the outbox is on.
metadata = sa.MetaData()

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PENDING = sa.text("sent_at IS NULL AND dead_at IS NULL")

outbox = sa.Table(
    "uow_outbox",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(36), nullable=False, unique=True),
    sa.Column("task", sa.String(255), nullable=False),
    sa.Column("queue", sa.String(255)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("due_at", sa.DateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", sa.DateTime),
    sa.Column("dead_at", sa.DateTime),
    sa.Index(
        "uow_outbox_due", "due_at", postgresql_where=_PENDING, sqlite_where=_PENDING
    ),
)

processed = sa.Table(
    "uow_processed",
    metadata,
    sa.Column("key", sa.String(36), primary_key=True),
    sa.Column("task", sa.String(255), nullable=False),
    sa.Column("processed_at", sa.DateTime, nullable=False),
)


def utcnow() -> datetime.datetime:
    """The time the outbox stores: UTC, without a time zone (the same on
    SQLite and PostgreSQL).
    """
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def dump_payload(name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> str:
    """The JSON a task's arguments are stored as.

    :raise TypeError: An argument cannot be stored as JSON; the message
        names it.
    """
    named = [(f"argument {n}", value) for n, value in enumerate(args)]
    named += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in named:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"The {label} of the task {name!r} cannot be stored as JSON"
                f" ({e}). Pass what JSON can carry: an id instead of a model"
                " instance, an ISO string instead of a datetime, a list instead"
                " of a set."
            ) from None
    return json.dumps({"args": list(args), "kwargs": kwargs})


def load_payload(payload: str) -> tuple[list[t.Any], dict[str, t.Any]]:
    """The arguments of a stored task."""
    data = json.loads(payload)
    return list(data["args"]), dict(data["kwargs"])
