"""Recovery of two-phase commits interrupted by a crash, and its CLI command."""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

import click
import sqlalchemy as sa
from flask import current_app
from flask import Flask
from flask.cli import AppGroup

from ._twophase import Coordinator
from ._twophase import decisions
from ._twophase import PREFIX

#: Decision records older than this are deleted by recovery, unless a prepared
#: transaction still needs them. It only has to outlast one recovery run.
KEEP_DECISIONS = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What :meth:`~flask_uow.UnitOfWork.recover` did with one prepared
    transaction.

    .. versionadded:: 0.1
    """

    #: The name of the engine (in ``UOW_ENGINES``) where it was prepared.
    engine: str
    #: Its transaction id (``pg_prepared_xacts.gid``).
    gid: str
    #: ``"committed"``, ``"rolled back"``, ``"in progress"`` (its unit of
    #: work is still committing; left alone), or in a dry run ``"would
    #: commit"`` and ``"would roll back"``.
    outcome: str

    def __str__(self) -> str:
        return f"{self.outcome}: {self.gid} on engine {self.engine!r}"


def prepared_transactions(coordinator: Coordinator, name: str) -> list[str]:
    """The ids of this app's prepared transactions in an engine's database."""
    pattern = f"{PREFIX}:{coordinator.namespace()}:%"
    with coordinator.engines[name].connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE :pattern"
                    " AND database = current_database() ORDER BY prepared"
                ),
                {"pattern": pattern},
            ).scalars()
        )


def recover(coordinator: Coordinator, dry_run: bool) -> list[Resolution]:
    """Resolve every prepared transaction of this app by its decision record,
    then delete old decision records. See :meth:`UnitOfWork.recover`.
    """
    found = {
        name: prepared_transactions(coordinator, name) for name in coordinator.engines
    }
    resolutions = []
    outcomes: dict[str, bool | None] = {}
    for name, gids in found.items():
        for gid in gids:
            decision = gid.split(":")[2]
            if decision not in outcomes:
                outcomes[decision] = coordinator.decide(decision, dry_run=dry_run)
            commit = outcomes[decision]
            if commit is None:
                outcome = "in progress"
            elif dry_run:
                outcome = "would commit" if commit else "would roll back"
            else:
                coordinator.finish(name, gid, commit)
                outcome = "committed" if commit else "rolled back"
            resolutions.append(Resolution(name, gid, outcome))
    if not dry_run:
        pending = [d for d, commit in outcomes.items() if commit is None]
        with coordinator.engines["default"].begin() as conn:
            conn.execute(
                sa.delete(decisions).where(
                    decisions.c.created < sa.func.clock_timestamp() - KEEP_DECISIONS,
                    decisions.c.id.not_in(pending),
                )
            )
    return resolutions


def install_cli(app: Flask) -> None:
    """Add the ``flask uow`` command group to *app*."""
    group = AppGroup("uow", help="flask_uow's commands.")

    @group.command("recover")
    @click.option(
        "--dry-run", is_flag=True, help="Show what would be done; change nothing."
    )
    def recover_command(dry_run: bool) -> None:
        """Resolve two-phase commits interrupted by a crash."""
        uow: t.Any = current_app.extensions["uow"]
        try:
            resolutions = uow.recover(dry_run=dry_run)
        except RuntimeError as e:
            raise click.ClickException(str(e)) from e
        for resolution in resolutions:
            click.echo(str(resolution))
        if not resolutions:
            click.echo("No prepared transaction of this app is in doubt.")

    app.cli.add_command(group)
