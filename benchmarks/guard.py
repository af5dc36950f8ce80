"""The check made before every commit that the database has not already
aborted the transaction: what it costs per commit, on each backend.
"""

from __future__ import annotations

import dataclasses
import timeit

import sqlalchemy as sa

from flask_uow._aborted import check_committable
from flask_uow._engines import create_engines


@dataclasses.dataclass
class GuardResult:
    backend: str
    ns_per_commit: float


def run(backend: str, url: str, folder: str, number: int) -> GuardResult:
    """Time the check on a connection of a flask_uow engine inside a
    transaction, as a commit makes it: the best of five runs of *number*
    checks.
    """
    engine = create_engines({"default": url}, folder)["default"]
    try:
        with engine.connect() as connection:
            connection.begin()
            connection.execute(sa.text("SELECT 1"))
            check_committable([connection])  # Raises if the check is wrong.
            best = min(
                timeit.repeat(
                    lambda: check_committable([connection]), number=number, repeat=5
                )
            )
    finally:
        engine.dispose()
    return GuardResult(backend, best / number * 1e9)
