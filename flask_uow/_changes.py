"""The change set of a transaction: what ORM flushes and Core statements wrote."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm

Operation = t.Literal["insert", "update", "delete"]


@dataclasses.dataclass(frozen=True)
class Change:
    """One write of a transaction: a row an ORM flush inserted, updated or
    deleted, or a Core statement (which may cover many rows), as sent with the
    :data:`~flask_uow.signals.before_commit` and
    :data:`~flask_uow.signals.after_commit` signals.

    .. versionadded:: 0.1
    """

    #: ``"insert"``, ``"update"`` or ``"delete"``.
    operation: Operation
    #: The ORM object, or ``None`` for a Core statement.
    instance: object | None
    #: The name of the table written to.
    table: str
    #: The primary key as a tuple, or ``None`` when the statement does not say.
    identity: tuple[t.Any, ...] | None
    #: For an ORM update, each changed column attribute mapped to
    #: ``(old, new)``; ``old`` is ``None`` when it was not loaded. For a Core
    #: ``INSERT`` or ``UPDATE``, each column its parameters set, mapped to
    #: ``(None, new)``. Empty otherwise.
    attributes: cabc.Mapping[str, tuple[t.Any, t.Any]] = dataclasses.field(
        default_factory=dict
    )


class ChangeSet:
    """The net changes of one transaction level, in the order first made."""

    def __init__(self) -> None:
        #: ORM changes, one per object; Core changes keyed by their position.
        self.entries: dict[object, Change] = {}

    def record(self, key: object, change: Change) -> None:
        """Fold *change* into the change already recorded for *key*."""
        previous = self.entries.get(key)
        if previous is None:
            self.entries[key] = change
            return
        merged = _merge(previous, change)
        if merged is None:
            del self.entries[key]
        else:
            self.entries[key] = merged

    def absorb(self, other: ChangeSet) -> None:
        """Fold a released savepoint's changes into this, its parent's."""
        for key, change in other.entries.items():
            self.record(key, change)

    def changes(self) -> list[Change]:
        return [
            c
            for c in self.entries.values()
            if c.operation != "update" or c.attributes or c.instance is None
        ]


def _merge(first: Change, then: Change) -> Change | None:
    if first.operation == "insert":
        # Whatever followed an insert is part of it, unless it was deleted.
        return None if then.operation == "delete" else first
    if then.operation != "update" or first.operation != "update":
        return then
    attributes = dict(first.attributes)
    for name, (old, new) in then.attributes.items():
        old = attributes[name][0] if name in attributes else old
        if old == new:
            attributes.pop(name, None)
        else:
            attributes[name] = (old, new)
    return dataclasses.replace(first, attributes=attributes)


def record_flush(changes: ChangeSet, session: orm.Session) -> None:
    """Record what a flush wrote; called from ``after_flush``, while
    ``session.new``, ``dirty`` and ``deleted`` still describe the flush.
    """
    for obj in session.new:
        state = sa.inspect(obj)
        identity = tuple(state.mapper.primary_key_from_instance(obj))
        changes.record(state, Change("insert", obj, _table(state), identity))
    for obj in session.dirty:
        state = sa.inspect(obj)
        attributes = _changed_columns(state)
        if attributes:
            change = Change("update", obj, _table(state), state.identity, attributes)
            changes.record(state, change)
    for obj in session.deleted:
        state = sa.inspect(obj)
        changes.record(state, Change("delete", obj, _table(state), state.identity))


def _table(state: orm.InstanceState[t.Any]) -> str:
    return str(getattr(state.mapper.local_table, "name", state.mapper.local_table))


def _changed_columns(
    state: orm.InstanceState[t.Any],
) -> dict[str, tuple[t.Any, t.Any]]:
    attributes = {}
    for attr in state.mapper.column_attrs:
        history = state.attrs[attr.key].history
        if history.added or history.deleted:
            old = history.deleted[0] if history.deleted else None
            new = history.added[0] if history.added else None
            if old != new:
                attributes[attr.key] = (old, new)
    return attributes


def record_statement(changes: ChangeSet, execute_state: orm.ORMExecuteState) -> None:
    """Record a Core (or ORM bulk) INSERT, UPDATE or DELETE that succeeded:
    one change per parameter set, with what the parameters make known.
    """
    statement = t.cast(sa.sql.expression.UpdateBase, execute_state.statement)
    table = getattr(statement, "table", None)
    if not isinstance(table, sa.Table):
        return
    operation: Operation
    if execute_state.is_insert:
        operation = "insert"
    elif execute_state.is_update:
        operation = "update"
    else:
        operation = "delete"
    parameters = execute_state.parameters
    if parameters:
        # Values given at execution, one mapping per row for executemany.
        rows = parameters if isinstance(parameters, list) else [parameters]
    elif operation == "delete":
        rows = [{}]
    else:
        # Values given with .values(); an INSERT without any lists every
        # column as None, meaning "not given", so those are left out.
        inline = statement.compile().params
        if operation == "insert":
            inline = {k: v for k, v in inline.items() if v is not None}
        rows = [inline]
    primary_key = [c.key for c in table.primary_key.columns]
    for row in rows:
        values: dict[str, t.Any] = {}
        if operation != "delete":
            given = t.cast("cabc.Mapping[str, t.Any]", row)
            values = {k: v for k, v in given.items() if k in table.columns}
        identity = None
        if primary_key and all(k in values for k in primary_key):
            identity = tuple(values[k] for k in primary_key)
        attributes = {k: (None, v) for k, v in values.items()}
        changes.record(
            object(), Change(operation, None, table.name, identity, attributes)
        )
