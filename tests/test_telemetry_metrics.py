"""OpenTelemetry metrics of units of work (issue 23, section 2), and the
spans of replica routes and two-phase commits.

Specification tests, written before the feature: they fail until phase B.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import time

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_uow import UnitOfWork

from .conftest import AppFactory
from .otel import attrs
from .otel import Telemetry
from .pgcluster import Cluster
from .pgtwophase import ACCOUNTS
from .replication import app_factory
from .replication import Pair
from .replication import postgresql_pair
from .replication import sqlite_pair
from .telemetry_apps import traced_app
from .test_telemetry_spans import first_attempt_fails


def test_transactions_are_counted_by_outcome_and_kind(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """'flask_uow.transactions' counts each unit and outermost block once,
    by outcome and kind (request, block, context).
    """
    app = traced_app(make_app, uow, db_url, backend)
    client = app.test_client()
    client.post("/items", data={"name": "a"})
    client.post("/veto")
    client.post("/aborted")
    client.post("/commit-fails")
    client.post("/block")
    with app.app_context():
        with uow.transaction() as session:
            session.execute(sa.select(1))
    total = telemetry.total
    name = "flask_uow.transactions"
    assert telemetry.points(name), "no transaction was counted"
    assert telemetry.units[name] == "{transaction}"
    request = {"flask_uow.kind": "request"}
    assert total(name, **request, **{"flask_uow.outcome": "commit"}) == 2
    assert total(name, **request, **{"flask_uow.outcome": "rollback"}) == 1
    assert total(name, **request, **{"flask_uow.outcome": "aborted"}) == 1
    assert total(name, **request, **{"flask_uow.outcome": "error"}) == 1
    assert (
        total(name, **{"flask_uow.kind": "block", "flask_uow.outcome": "commit"}) == 2
    )
    assert total(name, **{"flask_uow.kind": "context"}) == 1


def test_commit_duration_is_a_histogram_in_seconds(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """Each COMMIT sent records its duration in seconds in
    'flask_uow.commit.duration', no longer than the commit span.
    """
    app = traced_app(make_app, uow, db_url, backend)
    app.test_client().post("/items", data={"name": "a"})
    app.test_client().post("/veto")  # Rolled back: no COMMIT, no point.
    (point,) = telemetry.points("flask_uow.commit.duration")
    assert telemetry.units["flask_uow.commit.duration"] == "s"
    assert point.count == 1
    commit = telemetry.one("flask_uow.commit")
    span_seconds = (commit.end_time - commit.start_time) / 1e9  # type: ignore[operator]
    assert 0 < point.value <= span_seconds + 0.001
    assert point.attributes == {"flask_uow.outcome": "commit"}


def test_retries_are_counted_by_sqlstate(
    make_app: AppFactory,
    uow: UnitOfWork,
    db_url: str,
    backend: str,
    telemetry: Telemetry,
) -> None:
    """'flask_uow.retries' counts each retry with the error's SQLSTATE (the
    extended error name on SQLite).
    """
    engine = {"connect_args": {"timeout": 0}} if backend == "sqlite" else {}
    app = traced_app(make_app, uow, db_url, backend, engine_options=engine)
    with first_attempt_fails(uow, app, db_url, backend) as attempts:
        assert app.test_client().post("/bump").status_code == 200
    assert attempts == [1, 2]
    code = "40001" if backend == "postgresql" else "SQLITE_BUSY"
    assert telemetry.total("flask_uow.retries") == 1
    assert (
        telemetry.total("flask_uow.retries", **{"db.response.status_code": code}) == 1
    )
    assert telemetry.units["flask_uow.retries"] == "{retry}"


@pytest.fixture
def pair(backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Pair:
    if backend == "sqlite":
        return sqlite_pair(tmp_path)
    return postgresql_pair(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def make_replicated(
    uow: UnitOfWork, pair: Pair, tmp_path: pathlib.Path
) -> cabc.Iterator[cabc.Callable[..., Flask]]:
    make, finish = app_factory(uow, pair, tmp_path)
    yield make
    finish()
    if pair.cluster is not None:
        pair.cluster.reset()


def test_a_replica_read_says_replica(
    make_replicated: cabc.Callable[..., Flask], telemetry: Telemetry
) -> None:
    """A GET served by the replica has route 'replica'; a POST 'primary'."""
    app = make_replicated(UOW_OPENTELEMETRY=True)
    client = app.test_client()
    assert client.get("/items").get_json()["server"] == "replica"
    assert client.post("/items", data={"name": "a"}).status_code == 201
    routes = [attrs(u)["flask_uow.route"] for u in telemetry.named("flask_uow.unit")]
    assert routes == ["replica", "primary"]
    assert telemetry.total("flask_uow.replica.fallbacks") == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_fallbacks_are_counted_by_reason(
    make_replicated: cabc.Callable[..., Flask],
    pg_cluster: Cluster,
    telemetry: Telemetry,
) -> None:
    """Reads sent to the primary instead of the replica count in
    'flask_uow.replica.fallbacks' with reason 'position' (the client's own
    write is not replayed yet), 'lag' and 'unreachable'.
    """
    app = make_replicated(UOW_OPENTELEMETRY=True, UOW_REPLICA_MAX_LAG=0.05)
    writer, other = app.test_client(), app.test_client()
    pg_cluster.pause_replay()
    writer.post("/items", data={"name": "a"})
    assert writer.get("/items").get_json()["server"] == "primary"
    reason = "flask_uow.reason"
    assert telemetry.total("flask_uow.replica.fallbacks", **{reason: "position"}) == 1
    pg_cluster.wait_received()
    time.sleep(0.1)  # The replica now lags by more than the limit.
    assert other.get("/items").get_json()["server"] == "primary"
    assert telemetry.total("flask_uow.replica.fallbacks", **{reason: "lag"}) == 1
    pg_cluster.resume_replay()
    pg_cluster.wait_replayed()
    pg_cluster.replica.stop()
    assert other.get("/items").get_json()["server"] == "primary"
    assert (
        telemetry.total("flask_uow.replica.fallbacks", **{reason: "unreachable"}) == 1
    )
    assert telemetry.units["flask_uow.replica.fallbacks"] == "{fallback}"
    routes = {attrs(u)["flask_uow.route"] for u in telemetry.named("flask_uow.unit")}
    assert routes == {"primary"}


@pytest.fixture
def make_two_phase_app(
    uow: UnitOfWork, two_phase_urls: dict[str, str]
) -> cabc.Iterator[cabc.Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: object) -> Flask:
        app = Flask(f"twophase{len(apps)}")
        app.config["UOW_ENGINES"] = dict(two_phase_urls)
        app.config["UOW_TWO_PHASE"] = True
        app.config.update(config)
        uow.init_app(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        uow.dispose_engines(app)


def test_two_phase_commit_is_marked(
    make_two_phase_app: cabc.Callable[..., Flask],
    uow: UnitOfWork,
    telemetry: Telemetry,
) -> None:
    """A unit that wrote to two engines commits with two-phase commit: the
    unit and commit spans say two_phase=True and name both engines.
    """
    app = make_two_phase_app(UOW_OPENTELEMETRY=True)

    @app.post("/both")
    def both() -> str:
        uow.session.execute(sa.insert(ACCOUNTS["default"]).values(id=1, balance=1))
        uow.session.execute(sa.insert(ACCOUNTS["other"]).values(id=1, balance=1))
        return "ok"

    assert app.test_client().post("/both").status_code == 200
    unit = telemetry.one("flask_uow.unit")
    commit = telemetry.one("flask_uow.commit")
    for span in (unit, commit):
        assert attrs(span)["flask_uow.two_phase"] is True
        assert attrs(span)["flask_uow.engines"] == ("default", "other")
    assert attrs(unit)["flask_uow.outcome"] == "commit"
