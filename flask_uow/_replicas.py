"""Read replicas: the unit of work of a safe request reads from a replica, in a
READ ONLY transaction, unless the client must see writes the replicas have
not replayed yet.

Replicas are chosen per unit of work and engine, when the unit first needs
the engine, never per statement.
"""

from __future__ import annotations

import collections.abc as cabc
import itertools
import threading
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import current_app
from flask import Flask
from flask import request

from ._config import describe_url
from ._engines import _create_engine as create_engine
from ._engines import same_engine
from ._positions import Cookie
from ._positions import has_wal
from ._positions import replica_status
from ._positions import Token
from ._replica_config import check_config
from ._replica_config import create_engines

if t.TYPE_CHECKING:
    from ._unit import Unit

#: Requests whose unit of work reads from a replica.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The attribute :meth:`~flask_uow.UnitOfWork.primary` sets on a view.
PRIMARY_MARK = "_flask_uow_primary"

WRITE_ON_REPLICA = (
    "The {method} request to {path!r} tried to write to the database"
    " {engine!r}, but the unit of work of a GET, HEAD or OPTIONS request is READ"
    " ONLY: it reads from a read replica, or from the primary while the"
    " replicas catch up with the client's writes. Decorate the view with"
    " @uow.primary to run its unit of work on the primary, or write inside"
    " 'with uow.transaction():', which always uses the primary."
)

_WAIT_STEP = 0.002


class Replica:
    """One replica engine and whether it is reachable."""

    def __init__(self, name: str, index: int, engine: sa.Engine) -> None:
        self.engine = engine
        #: How logs name it: the engine name and the URL without password.
        self.label = (
            f"UOW_ENGINES[{name!r}]['replicas'][{index}] ({describe_url(engine.url)})"
        )
        self.down_until = 0.0
        self.down = False
        self.lock = threading.Lock()

    def failed(self, app: Flask, error: Exception, backoff: float) -> None:
        """Skip this replica for *backoff* seconds; log when it goes down."""
        with self.lock:
            self.down_until = time.monotonic() + backoff
            if self.down:
                return
            self.down = True
        app.logger.warning(
            "flask_uow: the replica %s cannot be used (%s: %s); reads go to the"
            " other servers, and it is tried again after %s seconds.",
            self.label,
            type(error).__name__,
            str(error).strip().splitlines()[0] if str(error).strip() else "",
            backoff,
        )

    def answered(self, app: Flask) -> None:
        if self.down:
            with self.lock:
                if not self.down:  # pragma: no cover - a race between threads
                    return
                self.down = False
            # A WARNING like the message that it went down, so that both
            # reach a server's default log (gunicorn's shows WARNING and up).
            app.logger.warning("flask_uow: the replica %s is used again.", self.label)


class Group:
    """The replicas of one engine, taken in turn."""

    def __init__(self, name: str, primary: sa.Engine, replicas: list[Replica]):
        self.name = name
        self.primary = primary
        self.replicas = replicas
        self.wal = has_wal(primary)
        self.turns = itertools.count()

    def in_turn(self) -> list[Replica]:
        """The usable replicas, starting with the next one in turn."""
        now = time.monotonic()
        start = next(self.turns) % len(self.replicas)
        ordered = self.replicas[start:] + self.replicas[:start]
        return [r for r in ordered if r.down_until <= now]


class Replicas:
    """What one app's units need to read from replicas."""

    def __init__(
        self,
        app: Flask,
        engines: cabc.Mapping[str, sa.Engine],
        replicas: cabc.Mapping[str, list[sa.Engine]],
    ) -> None:
        config = app.config
        self.max_lag: float | None = config["UOW_REPLICA_MAX_LAG"]
        self.wait: float = config["UOW_REPLICA_WAIT"]
        self.backoff: float = config["UOW_REPLICA_BACKOFF"]
        self.window: float = config["UOW_REPLICA_WINDOW"]
        self.cookie = Cookie(config["UOW_REPLICA_COOKIE"])
        #: ``hook(reason)`` when a safe unit reads from a primary after all:
        #: ``"position"``, ``"lag"`` or ``"unreachable"`` (telemetry).
        self.fell_back: list[cabc.Callable[[str], None]] = []
        #: By primary engine.
        self.groups = {
            engines[name]: Group(
                name,
                engines[name],
                [Replica(name, i, e) for i, e in enumerate(listed)],
            )
            for name, listed in replicas.items()
        }
        #: What each engine is, for signals: (engine name, role).
        self.labels: dict[sa.Engine, tuple[str, str]] = {}
        for group in self.groups.values():
            self.labels[group.primary] = (group.name, "primary")
            for replica in group.replicas:
                self.labels[replica.engine] = (group.name, "replica")

    def group_of(self, engine: sa.Engine) -> Group | None:
        """The group of a primary engine, also when *engine* is a copy of it
        sharing its pool (SQLite engines reach sessions as such copies).
        """
        for primary, group in self.groups.items():
            if same_engine(primary, engine):
                return group
        return None

    def label_of(self, bind: t.Any) -> tuple[str, str] | None:
        """What *bind* is, (engine name, role), also for a copy of an engine
        that shares its pool; ``None`` for a bind that is neither.
        """
        if not isinstance(bind, sa.Engine):
            return None
        for engine, label in self.labels.items():
            if same_engine(engine, bind):
                return label
        return None

    def engines(self) -> list[sa.Engine]:
        """Every replica engine."""
        return [r.engine for g in self.groups.values() for r in g.replicas]

    def opened(self, unit: Unit, session: orm.Session) -> None:
        """The ``opened`` hook of the app's state: give the session of a
        request's unit its route. Units outside the app's requests are not
        routed (no cookie can be sent there), nor a session joined to an outer
        transaction (test isolation).
        """
        if unit.environ is None or isinstance(session.bind, sa.Connection):
            return
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        safe = request.method in SAFE_METHODS
        if safe and request.endpoint is not None:
            view = app.view_functions.get(request.endpoint)
            safe = not getattr(view, PRIMARY_MARK, False)
        session.uow_route = Route(app, self, safe)  # type: ignore[attr-defined]

    def choose(self, route: Route, group: Group) -> sa.Engine:
        """The engine a safe unit reads *group*'s data from."""
        lsn, windowed = route.token.needs(group.name)
        if windowed:
            for hook in self.fell_back:
                hook("position")
            return group.primary
        behind: Replica | None = None
        missing = lagging = False
        for replica in group.in_turn():
            if not group.wal:
                return replica.engine
            status = self._status(route.app, replica)
            if status is None:
                continue
            replayed, lag = status
            if self.max_lag is not None and (lag is None or lag > self.max_lag):
                # A lagging replica that also misses the client's own write
                # is told as missing it (telemetry's reason).
                missing = missing or (lsn is not None and replayed < lsn)
                lagging = True
                continue
            if lsn is not None and replayed < lsn:
                behind = behind or replica
                continue
            route.token.drop(group.name)
            return replica.engine
        if behind is not None and lsn is not None and self.wait > 0:
            chosen = self._wait_for(route, group, behind, lsn)
            if chosen is group.primary:
                for hook in self.fell_back:
                    hook("position")
            return chosen
        for hook in self.fell_back:
            hook(
                "position" if behind or missing else "lag" if lagging else "unreachable"
            )
        return group.primary

    def _status(self, app: Flask, replica: Replica) -> tuple[int, float | None] | None:
        try:
            status = replica_status(replica.engine)
        except sa.exc.SQLAlchemyError as e:
            replica.failed(app, e, self.backoff)
            return None
        replica.answered(app)
        return status

    def _wait_for(
        self, route: Route, group: Group, replica: Replica, lsn: int
    ) -> sa.Engine:
        """Wait up to ``UOW_REPLICA_WAIT`` for *replica* to replay *lsn*."""
        deadline = time.monotonic() + self.wait
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(_WAIT_STEP, left))
            status = self._status(route.app, replica)
            if status is None:
                break
            if status[0] >= lsn:
                route.token.drop(group.name)
                return replica.engine
        return group.primary


class Route:
    """Which servers one unit of work in a request uses, and what its commits
    wrote, for the client's token.
    """

    def __init__(self, app: Flask, replicas: Replicas, safe: bool) -> None:
        self.app = app
        self.replicas = replicas
        #: The unit may read from replicas.
        self.safe = safe
        self.chosen: dict[sa.Engine, sa.Engine] = {}
        #: Primary connections of the current transaction, with engine names.
        self.open: dict[sa.Connection, str] = {}
        #: Engines with WAL positions on which a commit of the unit wrote.
        self.committed: set[str] = set()
        self._token: Token | None = None

    @property
    def token(self) -> Token:
        """The client's token, read from its cookie on first use."""
        if self._token is None:
            self._token = self.replicas.cookie.load(self.app, request)
        return self._token

    def __call__(self, engine: sa.Engine) -> sa.Engine:
        """The engine to use instead of the primary *engine*."""
        if not self.safe:
            return engine
        chosen = self.chosen.get(engine)
        if chosen is None:
            group = self.replicas.groups.get(engine)
            chosen = engine if group is None else self.replicas.choose(self, group)
            self.chosen[engine] = chosen
        return chosen

    def to_primary(self) -> None:
        """Use the primary for the rest of the unit (its transaction ended)."""
        self.safe = False
        self.chosen.clear()

    def check_write(self, bind: t.Any) -> None:
        """Raise if *bind*, about to be written to, is an engine with
        replicas or one of its replicas.
        """
        label = self.replicas.label_of(bind)
        if label is not None:
            raise RuntimeError(
                WRITE_ON_REPLICA.format(
                    method=request.method, path=request.path, engine=label[0]
                )
            )


def create_replicas(
    app: Flask,
    engines: cabc.Mapping[str, sa.Engine],
    listed: cabc.Mapping[str, list[t.Any]],
    entries: cabc.Mapping[str, t.Any],
) -> Replicas | None:
    """Create an app's replica engines from the lists that
    :func:`split_replicas` took out of ``UOW_ENGINES``, or return ``None``
    when it has none. Each is created as a ``UOW_ENGINES`` entry is, with
    the ``create_engine`` arguments of its primary's entry (*entries*).
    """
    check_config(app.config)
    if not listed:
        return None
    if not app.secret_key:
        raise RuntimeError(
            "Read replicas need the app's 'SECRET_KEY' to sign the cookie that"
            " lets a client read its own writes. Set"
            " app.config['SECRET_KEY'] before calling 'init_app'."
        )

    def make_engine(label: str, entry: t.Any) -> sa.Engine:
        return create_engine(label, entry, app.instance_path, label)

    created = create_engines(engines, listed, make_engine, entries)
    return Replicas(app, engines, created)
