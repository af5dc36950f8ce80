"""The transactional outbox: ``enqueue`` writes a task into the unit's own
transaction, the fast path publishes it right after the commit, and
``@uow.once`` records a task's key with its effects.

Off (``UOW_OUTBOX`` false) nothing here is set up. On, :func:`install`
makes one :class:`Outbox` per app; it attaches nothing to the request path:
each ``enqueue`` registers its own on_commit callback, which is dropped with
a savepoint or unit that rolls back (see ``_transaction.callback_list``).
"""

from __future__ import annotations

import collections.abc as cabc
import datetime
import functools
import logging
import math
import sys
import time
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from ._brokers import Broker
from ._outbox_tables import dump_payload
from ._outbox_tables import metadata
from ._outbox_tables import outbox
from ._outbox_tables import processed
from ._outbox_tables import utcnow
from ._state import State
from ._transaction import callback_list
from .testing import CapturedTask
from .testing import ISOLATION

logger = logging.getLogger("flask_uow")

#: The settings of the outbox and their defaults.
DEFAULTS: dict[str, t.Any] = {
    "UOW_OUTBOX": False,
    "UOW_OUTBOX_BROKER": None,
    "UOW_OUTBOX_GRACE": 10,
    "UOW_OUTBOX_RETRY_DELAY": 1,
    "UOW_OUTBOX_RETRY_MAX_DELAY": 600,
    "UOW_OUTBOX_DEAD_AFTER": 25,
    "UOW_OUTBOX_KEEP": 7 * 24 * 3600,
    "UOW_OUTBOX_REDELIVER_AFTER": 0,
}
_SECONDS = (
    "UOW_OUTBOX_GRACE",
    "UOW_OUTBOX_RETRY_DELAY",
    "UOW_OUTBOX_RETRY_MAX_DELAY",
    "UOW_OUTBOX_KEEP",
    "UOW_OUTBOX_REDELIVER_AFTER",
)
#: How long the fast path leaves publishing to the relay after a publish
#: failed, so that a broker outage does not slow every request down.
FAST_PATH_PAUSE = 5.0
#: The advisory lock the outbox's tables are created under on PostgreSQL.
_TABLES_LOCK = 0x75_6F_77_5F_6F_62  # "uow_ob"


def check_settings(config: cabc.Mapping[str, t.Any]) -> bool:
    """Check the outbox settings of an app's config; whether it is on.

    :raise TypeError: A value has the wrong type.
    :raise ValueError: A number is out of range.
    :raise RuntimeError: The outbox is on without a broker.
    """
    on = config.get("UOW_OUTBOX", False)
    if not isinstance(on, bool):
        raise TypeError(
            f"'UOW_OUTBOX' must be True or False, not {on!r}. For example"
            " app.config['UOW_OUTBOX'] = True."
        )
    for key in _SECONDS:
        value = config.get(key, DEFAULTS[key])
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(
                f"{key!r} must be a number of seconds, not {value!r}. For"
                f" example app.config[{key!r}] = {DEFAULTS[key]}."
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{key!r} must be a number of seconds of 0 or more, not {value!r}."
            )
    dead = config.get("UOW_OUTBOX_DEAD_AFTER", DEFAULTS["UOW_OUTBOX_DEAD_AFTER"])
    if not isinstance(dead, int) or isinstance(dead, bool):
        raise TypeError(
            f"'UOW_OUTBOX_DEAD_AFTER' must be a number of failed publishes, not"
            f" {dead!r}. For example app.config['UOW_OUTBOX_DEAD_AFTER'] = 25."
        )
    if dead < 1:
        raise ValueError(
            f"'UOW_OUTBOX_DEAD_AFTER' must be 1 or more, not {dead!r}: it is how"
            " many failed publishes make an outbox row dead."
        )
    broker = config.get("UOW_OUTBOX_BROKER")
    if on and broker is None:
        raise RuntimeError(
            "'UOW_OUTBOX' is on but 'UOW_OUTBOX_BROKER' is not set. Set it to"
            " CeleryBroker(celery_app) or RQBroker(redis_connection)."
        )
    if broker is not None and not isinstance(broker, Broker):
        raise TypeError(
            f"'UOW_OUTBOX_BROKER' must be a CeleryBroker or an RQBroker, not"
            f" {broker!r}. For example app.config['UOW_OUTBOX_BROKER'] ="
            " CeleryBroker(celery_app)."
        )
    return on


class Outbox:
    """The outbox of one app: its settings, its broker, and whether its
    tables are known to exist.
    """

    def __init__(self, app: Flask, state: State, config: cabc.Mapping[str, t.Any]):
        self.app = app
        self.state = state
        self.engine: sa.Engine = state.engines["default"]
        self.postgresql = self.engine.dialect.name == "postgresql"
        self.broker: Broker = config["UOW_OUTBOX_BROKER"]
        setting = functools.partial(_setting, config)
        self.grace = datetime.timedelta(seconds=setting("UOW_OUTBOX_GRACE"))
        self.retry_delay: float = setting("UOW_OUTBOX_RETRY_DELAY")
        self.retry_max_delay: float = setting("UOW_OUTBOX_RETRY_MAX_DELAY")
        self.dead_after: int = setting("UOW_OUTBOX_DEAD_AFTER")
        self.keep = datetime.timedelta(seconds=setting("UOW_OUTBOX_KEEP"))
        #: Publish a sent row again when no ``@uow.once`` run recorded its
        #: key this long after it was sent; ``None``: never.
        redeliver = setting("UOW_OUTBOX_REDELIVER_AFTER")
        self.redeliver_after = (
            datetime.timedelta(seconds=redeliver) if redeliver else None
        )
        #: The tables exist, committed: no need to look again.
        self.tables_ready = False
        #: Until when (``time.monotonic``) the fast path leaves rows to the
        #: relay, after a failed publish.
        self.paused_until = 0.0

    def tables_created(self) -> None:
        """The transaction that created the tables committed."""
        self.tables_ready = True

    # -- The unit's side ---------------------------------------------------

    def enqueue(
        self, task: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> str:
        """Write one row in the current unit's transaction; its key."""
        name, queue = self.broker.describe(task)
        payload = dump_payload(name, args, kwargs)
        app, state = self.app, self.state
        session = state.session(app)
        isolation = session.info.get(ISOLATION)
        created = self.ensure_tables(session, isolated=isolation is not None)
        key = str(uuid.uuid4())
        now = utcnow()
        session.execute(
            sa.insert(outbox).values(
                key=key,
                task=name,
                queue=queue,
                payload=payload,
                created_at=now,
                due_at=now + self.grace,
                attempts=0,
            )
        )
        callback: cabc.Callable[[], object]
        if isolation is not None:
            captured = CapturedTask(
                key,
                name,
                queue,
                args,
                kwargs,
                functools.partial(self.broker.run, key, name, list(args), kwargs),
            )
            callback = functools.partial(isolation.tasks.append, captured)
        else:
            callback = functools.partial(
                self.publish_now, key, name, queue, list(args), kwargs, created
            )
        callback_list(state.unit(app)).append(callback)
        return key

    def ensure_tables(self, session: orm.Session, *, isolated: bool = False) -> bool:
        """Make sure the tables exist in *session*'s transaction, creating
        them under a lock if not; whether this transaction created them.
        """
        if self.tables_ready:
            return False
        connection = session.connection()
        if _has_tables(connection):
            self.tables_ready = not isolated
            return False
        create_tables(connection)
        return not isolated

    def publish_now(
        self,
        key: str,
        name: str,
        queue: str | None,
        args: list[t.Any],
        kwargs: dict[str, t.Any],
        created_tables: bool,
    ) -> None:
        """The fast path, run right after the unit committed: publish the
        row and mark it sent, in a short transaction of its own. A failure
        leaves the row to the relay.
        """
        if created_tables:
            self.tables_ready = True
        if time.monotonic() < self.paused_until:
            return
        try:
            self.broker.publish(key, name, queue, args, kwargs)
        except Exception as e:
            self.paused_until = time.monotonic() + FAST_PATH_PAUSE
            logger.warning(
                "flask_uow: publishing task %s (%s) right after the commit failed"
                " (%s); the relay will publish it.",
                key,
                name,
                e,
            )
            return
        try:
            with self.engine.begin() as conn:
                if self.postgresql:
                    # Losing this mark in a crash costs a second publish,
                    # which @uow.once absorbs: no need to wait for the WAL.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.key == key, outbox.c.sent_at.is_(None))
                    .values(sent_at=utcnow())
                )
        except Exception as e:
            logger.warning(
                "flask_uow: task %s (%s) was published but could not be marked"
                " sent (%s); the relay will publish it again.",
                key,
                name,
                e,
            )

    # -- The consumer's side -------------------------------------------------

    def claim(self, session: orm.Session, key: str, name: str) -> bool:
        """Record *key* as processed in *session*'s transaction; ``False``
        when a committed transaction already did (a redelivery). A
        concurrent run of the same key makes this wait for its end.
        """
        created = self.ensure_tables(
            session, isolated=session.info.get(ISOLATION) is not None
        )
        if created:
            callback_list(self.state.unit(self.app)).append(self.tables_created)
        connection = session.connection()
        dialect = connection.dialect.name
        values = {"key": key, "task": name[:255], "processed_at": utcnow()}
        insert: t.Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - the outbox is tested on these two
            if connection.execute(
                sa.select(processed.c.key).where(processed.c.key == key)
            ).first():
                return False
            connection.execute(sa.insert(processed).values(**values))
            return True
        # The inserted key comes back, or nothing on a conflict (rowcount
        # is not reliable with ON CONFLICT across drivers).
        statement = (
            insert(processed)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(processed.c.key)
        )
        return connection.execute(statement).first() is not None


def _setting(config: cabc.Mapping[str, t.Any], key: str) -> t.Any:
    return config.get(key, DEFAULTS[key])


def _has_tables(connection: sa.Connection) -> bool:
    inspector = sa.inspect(connection)
    return all(inspector.has_table(name) for name in metadata.tables)


def create_tables(connection: sa.Connection) -> None:
    """Create the outbox's tables that do not exist, in *connection*'s
    transaction, under a lock: PostgreSQL's advisory lock, SQLite's write
    lock (which creating a table takes).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_TABLES_LOCK)))
    metadata.create_all(connection, checkfirst=True)


def current_task_key() -> str | None:
    """The id of the Celery task or RQ job running now, if any."""
    celery = sys.modules.get("celery")
    if celery is not None:
        task = celery.current_task  # A proxy: false when no task runs.
        if task:
            request = task.request
            if request.id and not request.called_directly:
                return t.cast(str, request.id)
    rq = sys.modules.get("rq")
    if rq is not None:
        job = rq.get_current_job()
        if job is not None:
            return t.cast(str, job.id)
    return None


def install(
    app: Flask, state: State, add_tables: cabc.Callable[[sa.MetaData], None]
) -> Outbox | None:
    """Set up the outbox of *app* if ``UOW_OUTBOX`` is on; its
    :class:`Outbox`, or ``None`` (and nothing is set up).
    """
    if not check_settings(app.config):
        return None
    add_tables(metadata)
    return Outbox(app, state, app.config)
