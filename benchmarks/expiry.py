"""What the end-of-request commit saves by not expiring the objects a request
loaded, and a check that they stay readable after the request.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import g

from .apps import BUILDERS
from .apps import create_tables
from .apps import Item

OBJECTS = 20


@dataclasses.dataclass
class Result:
    backend: str
    #: Median microseconds to commit and close a session that read 20
    #: objects, when the commit expires them and when it does not.
    expiring_us: float
    keeping_us: float
    #: Objects loaded in a flask_uow request were readable after it.
    readable_after: bool

    @property
    def saved_us(self) -> float:
        return self.expiring_us - self.keeping_us


def _unit(factory: orm.sessionmaker[orm.Session], expire: bool) -> int:
    """Read 20 objects, then commit and close; the nanoseconds the end took."""
    session = factory(expire_on_commit=expire)
    items = session.scalars(sa.select(Item).order_by(Item.id).limit(OBJECTS)).all()
    start = time.perf_counter_ns()
    session.commit()
    session.close()
    elapsed = time.perf_counter_ns() - start
    if len(items) != OBJECTS:
        raise RuntimeError("The benchmark table is not seeded.")
    return elapsed


def readable_after_request(url: str) -> bool:
    """Load 20 objects in a flask_uow request and read them after it."""
    app, dispose = BUILDERS["uow"](url)
    uow = app.extensions["uow"]

    @app.get("/keep")
    def keep() -> str:
        g.items = uow.session.scalars(sa.select(Item).limit(OBJECTS)).all()
        return ""

    try:
        client = app.test_client()
        with client:
            client.get("/keep")
            items = g.items
        return len(items) == OBJECTS and all(item.name for item in items)
    except orm.exc.DetachedInstanceError:
        return False
    finally:
        dispose()


def run(backend: str, url: str, rounds: int, per_round: int) -> Result:
    """Time the end (commit and close) of a unit that read 20 objects, with
    and without expiring them.
    """
    create_tables(url)
    engine = sa.create_engine(url)
    factory = orm.sessionmaker(engine)
    samples: dict[bool, list[float]] = {True: [], False: []}
    try:
        for expire in (True, False):  # Warm up.
            for _ in range(per_round):
                _unit(factory, expire)
        for round_ in range(rounds):
            gc.collect()
            order = (True, False) if round_ % 2 else (False, True)
            for expire in order:
                elapsed = sum(_unit(factory, expire) for _ in range(per_round))
                samples[expire].append(elapsed / per_round / 1000)
    finally:
        engine.dispose()
    return Result(
        backend,
        statistics.median(samples[True]),
        statistics.median(samples[False]),
        readable_after_request(url),
    )
