"""Recovery of two-phase commits interrupted by a crash, and its CLI command."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import datetime
import typing as t

import click
import sqlalchemy as sa
from flask import current_app
from flask import Flask
from flask.cli import AppGroup

from ._config import describe_url
from ._config import scrub
from ._config import secrets_of
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


class RecoveryIncompleteError(RuntimeError):
    """Raised by :meth:`~flask_uow.UnitOfWork.recover` when a database could
    not be reached, after it settled every prepared transaction it could
    reach. Run recovery again once the database is back.

    With the ``"default"`` engine unreachable nothing is settled: it holds
    the commit decisions.

    .. versionadded:: 0.1
    """

    def __init__(
        self, message: str, resolutions: list[Resolution], unreachable: dict[str, str]
    ) -> None:
        super().__init__(message)
        #: What was done, as :meth:`~flask_uow.UnitOfWork.recover` returns it.
        self.resolutions = resolutions
        #: Why each unreachable engine could not be reached, by engine name:
        #: the driver's error in one line, without the password.
        self.unreachable = unreachable


#: Errors that say a database cannot be reached (connection refused, server
#: gone, connection lost), rather than that recovery did something wrong.
_UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)


def describe_error(engine: sa.Engine, error: BaseException) -> str:
    """*error* in one line, for an operator: the driver's error and its first
    line, with every credential of *engine*'s URL masked.
    """
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    line = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
    return scrub(line, secrets_of(None, engine.url, {}))


def _unreachable(coordinator: Coordinator, name: str, error: BaseException) -> str:
    engine = coordinator.engines[name]
    return f"{name!r} ({describe_url(engine.url)}): {describe_error(engine, error)}"


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

    :raise RecoveryIncompleteError: An engine could not be reached; the
        others were settled first.
    """
    default = coordinator.engines["default"]
    try:
        coordinator.namespace()
    except _UNREACHABLE as e:
        raise RecoveryIncompleteError(
            "Nothing was settled: the engine 'default' holds the commit"
            f" decisions and cannot be reached ({describe_url(default.url)}):"
            f" {describe_error(default, e)}. Run recovery again once it is"
            " back.",
            [],
            {"default": _unreachable(coordinator, "default", e)},
        ) from None
    resolutions: list[Resolution] = []
    unreachable: dict[str, str] = {}
    outcomes: dict[str, bool | None] = {}
    for name in coordinator.engines:
        try:
            for gid in prepared_transactions(coordinator, name):
                resolutions.append(_settle(coordinator, name, gid, outcomes, dry_run))
        except _UNREACHABLE as e:
            if name == "default" or _coordinator_down(coordinator):
                raise _incomplete(coordinator, resolutions, {"default": e}) from None
            unreachable[name] = _unreachable(coordinator, name, e)
    if not dry_run:
        pending = [d for d, commit in outcomes.items() if commit is None]
        with coordinator.engines["default"].begin() as conn:
            conn.execute(
                sa.delete(decisions).where(
                    decisions.c.created < sa.func.clock_timestamp() - KEEP_DECISIONS,
                    decisions.c.id.not_in(pending),
                )
            )
    if unreachable:
        raise _incomplete(coordinator, resolutions, unreachable)
    return resolutions


def _settle(
    coordinator: Coordinator,
    name: str,
    gid: str,
    outcomes: dict[str, bool | None],
    dry_run: bool,
) -> Resolution:
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
    return Resolution(name, gid, outcome)


def _coordinator_down(coordinator: Coordinator) -> bool:
    """Whether the ``"default"`` engine stopped answering mid-way (an error
    while settling another engine may have been its).
    """
    try:
        with coordinator.engines["default"].connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except _UNREACHABLE:
        return True
    return False


def _incomplete(
    coordinator: Coordinator,
    resolutions: list[Resolution],
    errors: cabc.Mapping[str, BaseException | str],
) -> RecoveryIncompleteError:
    lines = {
        name: error
        if isinstance(error, str)
        else _unreachable(coordinator, name, error)
        for name, error in errors.items()
    }
    names = ", ".join(repr(name) for name in lines)
    count = f"{len(lines)} engine{'s' if len(lines) > 1 else ''}"
    return RecoveryIncompleteError(
        f"Recovery is incomplete: {count} could not be reached ({names});"
        f" {len(resolutions)} prepared transaction(s) were settled. Run"
        " recovery again once they are back. Unreachable: " + "; ".join(lines.values()),
        resolutions,
        lines,
    )


def summary(unreachable: cabc.Iterable[str], resolutions: list[Resolution]) -> str:
    """One sentence: which engines could not be reached, what was settled."""
    names = list(unreachable)
    settled = [r for r in resolutions if r.outcome in ("committed", "rolled back")]
    return (
        f"{_count(len(names), 'engine')} could not be reached"
        f" ({', '.join(repr(n) for n in names)}) and"
        f" {_count(len(settled), 'prepared transaction')}"
        f" {'was' if len(settled) == 1 else 'were'} settled; run"
        " recovery again once the unreachable ones are back."
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


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
        except RecoveryIncompleteError as e:
            for resolution in e.resolutions:
                click.echo(str(resolution))
            if "default" in e.unreachable:
                # The coordinator: nothing more could be settled; one line
                # says why.
                raise click.ClickException(str(e)) from e
            for line in e.unreachable.values():
                click.echo(f"unreachable: {line}", err=True)
            raise click.ClickException(
                f"Recovery is incomplete: {summary(e.unreachable, e.resolutions)}"
            ) from e
        except RuntimeError as e:
            raise click.ClickException(str(e)) from e
        for resolution in resolutions:
            click.echo(str(resolution))
        if not resolutions:
            click.echo("No prepared transaction of this app is in doubt.")

    app.cli.add_command(group)
