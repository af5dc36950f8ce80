"""Correctness under load: the example app under gunicorn (4 workers) takes
8 clients x 50 concurrent transfers among 5 accounts without an error, and
every committed transfer is in the balances, the audit log and the
notifications exactly once.
"""

from __future__ import annotations

import sqlalchemy as sa

from benchmarks import load
from example_app.models import Base


def test_concurrent_transfers_lose_nothing(db_url: str) -> None:
    """400 concurrent transfers: all answered 201; balances, entries, audit
    trail and notifications match them exactly (SQLite: IMMEDIATE writes and
    WAL; PostgreSQL: SERIALIZABLE with retries).
    """
    try:
        result = load.run(db_url, workers=4, clients=8, requests=50, accounts=5)
    finally:
        engine = sa.create_engine(db_url, poolclass=sa.NullPool)
        Base.metadata.drop_all(engine)
        engine.dispose()
    assert dict(result.statuses) == {201: 400}, result.log
    assert len(result.committed) == 400
    assert result.problems == []
