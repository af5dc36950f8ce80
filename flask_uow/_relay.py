"""The outbox relay: publish the rows the fast path did not mark sent, with
backoff while the broker is down, moving a row aside as dead after too many
failed publishes; and its ``flask uow relay`` command.
"""

from __future__ import annotations

import datetime
import random
import signal
import time
import typing as t

import click
import sqlalchemy as sa
from flask import Flask

from ._outbox import create_tables
from ._outbox import logger
from ._outbox import Outbox
from ._outbox_tables import load_payload
from ._outbox_tables import outbox
from ._outbox_tables import processed
from ._outbox_tables import utcnow
from ._sqlite import is_configurable

#: How many rows one pass takes at most.
BATCH = 100
#: How often the relay deletes old sent rows and processed keys, in seconds.
CLEAN_EVERY = 60.0


class Relay:
    """Publishes an app's due outbox rows."""

    def __init__(self, box: Outbox) -> None:
        self.box = box
        self.engine = box.engine
        self.postgresql = self.engine.dialect.name == "postgresql"
        self.stopping = False
        self.published = 0
        self.failed = 0

    def begin(self, conn: sa.Connection) -> sa.Transaction:
        """Begin a transaction that holds the rows it takes: on SQLite, one
        that takes the write lock at once, so that relays take turns.
        """
        transaction = conn.begin()
        if self.engine.dialect.name == "sqlite" and is_configurable(self.engine):
            conn.exec_driver_sql("ROLLBACK")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return transaction

    def ensure_tables(self) -> None:
        if self.box.tables_ready:
            return
        with self.engine.connect() as conn, self.begin(conn):
            create_tables(conn)
        self.box.tables_ready = True

    def run_pass(self) -> tuple[int, bool]:
        """Publish one batch of due rows; how many were published, and
        whether the pass stopped at a failed publish.
        """
        self.ensure_tables()
        box = self.box
        with self.engine.connect() as conn, self.begin(conn):
            now = utcnow()
            query = (
                sa.select(
                    outbox.c.id,
                    outbox.c.key,
                    outbox.c.task,
                    outbox.c.queue,
                    outbox.c.payload,
                    outbox.c.attempts,
                )
                .where(self.due(now), outbox.c.dead_at.is_(None))
                .order_by(outbox.c.id)
                .limit(BATCH)
            )
            if self.postgresql:
                query = query.with_for_update(skip_locked=True)
            sent: list[int] = []
            failed = False
            for row in conn.execute(query).all():
                args, kwargs = load_payload(row.payload)
                try:
                    box.broker.publish(row.key, row.task, row.queue, args, kwargs)
                except Exception as e:
                    failed = True
                    self.record_failure(conn, row, e, now)
                    break
                sent.append(row.id)
            if sent:
                values: dict[str, t.Any] = {"sent_at": now}
                if box.redeliver_after is not None:
                    # A publish again counts, so a task that never records
                    # its key ends as a dead row.
                    values["attempts"] = outbox.c.attempts + sa.case(
                        (outbox.c.sent_at.is_not(None), 1), else_=0
                    )
                conn.execute(
                    sa.update(outbox).where(outbox.c.id.in_(sent)).values(**values)
                )
        self.published += len(sent)
        self.failed += failed
        return len(sent), failed

    def due(self, now: datetime.datetime) -> sa.ColumnElement[bool]:
        """Which rows a pass publishes: unsent rows that are due, and with
        ``UOW_OUTBOX_REDELIVER_AFTER``, rows sent that long ago whose key no
        ``@uow.once`` run recorded (the broker lost the task).
        """
        unsent = sa.and_(outbox.c.sent_at.is_(None), outbox.c.due_at <= now)
        after = self.box.redeliver_after
        if after is None:
            return unsent
        processed_key = sa.select(processed.c.key).where(
            processed.c.key == outbox.c.key
        )
        lost = sa.and_(
            outbox.c.sent_at < now - after,
            outbox.c.attempts < self.box.dead_after,
            ~sa.exists(processed_key),
        )
        return sa.or_(unsent, lost)

    def record_failure(
        self, conn: sa.Connection, row: t.Any, error: Exception, now: datetime.datetime
    ) -> None:
        """Count a failed publish of *row*: back off, or move it aside."""
        box = self.box
        attempts = row.attempts + 1
        delay = min(box.retry_delay * 2 ** (attempts - 1), box.retry_max_delay)
        delay *= random.uniform(0.5, 1.0)
        values: dict[str, t.Any] = {
            "attempts": attempts,
            "last_error": f"{type(error).__name__}: {error}"[:2000],
            "due_at": now + datetime.timedelta(seconds=delay),
        }
        if attempts >= box.dead_after:
            values["dead_at"] = now
            logger.warning(
                "flask_uow: the outbox row %s (task %s) is dead after %d failed"
                " publishes; the last error: %s. 'flask uow relay --dead' lists"
                " it, '--retry-dead' publishes it again.",
                row.key,
                row.task,
                attempts,
                values["last_error"],
            )
        else:
            logger.warning(
                "flask_uow: publishing task %s (%s) failed (attempt %d); retrying"
                " in %.1f s: %s",
                row.key,
                row.task,
                attempts,
                delay,
                values["last_error"],
            )
        conn.execute(sa.update(outbox).where(outbox.c.id == row.id).values(**values))

    def drain(self) -> None:
        """Run passes until nothing is due or a publish fails."""
        while not self.stopping:
            count, failed = self.run_pass()
            if failed or count < BATCH:
                return

    def clean(self) -> None:
        """Delete sent rows and processed keys older than ``UOW_OUTBOX_KEEP``."""
        before = utcnow() - self.box.keep
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(outbox).where(
                    outbox.c.sent_at.is_not(None), outbox.c.sent_at < before
                )
            )
            conn.execute(sa.delete(processed).where(processed.c.processed_at < before))

    def run_forever(self, interval: float) -> None:
        """Relay until SIGTERM or SIGINT; the current pass finishes first."""

        def stop(signum: int, frame: t.Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        cleaned = 0.0
        while not self.stopping:
            try:
                self.drain()
                if time.monotonic() - cleaned > CLEAN_EVERY:
                    self.clean()
                    cleaned = time.monotonic()
            except sa.exc.SQLAlchemyError as e:
                logger.warning("flask_uow: a relay pass failed: %s", e)
            deadline = time.monotonic() + interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.05, interval))


def dead_rows(box: Outbox) -> list[t.Any]:
    """The dead rows, oldest first."""
    Relay(box).ensure_tables()
    with box.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    outbox.c.key, outbox.c.task, outbox.c.attempts, outbox.c.last_error
                )
                .where(outbox.c.dead_at.is_not(None))
                .order_by(outbox.c.id)
            )
        )


def retry_dead(box: Outbox, keys: tuple[str, ...]) -> int:
    """Make dead rows (those of *keys*, or all) due again; how many."""
    Relay(box).ensure_tables()
    query = sa.update(outbox).where(outbox.c.dead_at.is_not(None))
    if keys:
        query = query.where(outbox.c.key.in_(keys))
    with box.engine.begin() as conn:
        result = conn.execute(query.values(dead_at=None, attempts=0, due_at=utcnow()))
    return result.rowcount


def install_cli(app: Flask, box: Outbox) -> None:
    """Add ``flask uow relay`` to the app's ``uow`` command group."""
    group = t.cast(click.Group, app.cli.commands["uow"])

    @group.command("relay")
    @click.option("--once", is_flag=True, help="Publish what is due, then exit.")
    @click.option("--dead", is_flag=True, help="List the dead rows and exit.")
    @click.option(
        "--retry-dead",
        "retry",
        is_flag=True,
        help="Make dead rows (the KEYs given, or all) due again and exit.",
    )
    @click.option(
        "--interval",
        type=click.FloatRange(min=0.01),
        default=1.0,
        show_default=True,
        help="Seconds between looks for due rows.",
    )
    @click.argument("keys", nargs=-1)
    def relay_command(
        once: bool, dead: bool, retry: bool, interval: float, keys: tuple[str, ...]
    ) -> None:
        """Publish the outbox rows the fast path did not (runs until stopped)."""
        if keys and not retry:
            raise click.UsageError("KEYs are only taken with --retry-dead.")
        if dead:
            rows = dead_rows(box)
            for row in rows:
                click.echo(f"{row.key}  {row.task}  {row.attempts}  {row.last_error}")
            if not rows:
                click.echo("No dead outbox row.")
            return
        if retry:
            click.echo(f"{retry_dead(box, keys)} dead rows are due again.")
            return
        relay = Relay(box)
        if once:
            relay.drain()
            click.echo(f"Published {relay.published} tasks.")
            return
        click.echo("Relaying the outbox; stop with SIGTERM or Ctrl-C.")
        relay.run_forever(interval)
