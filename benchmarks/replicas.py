"""Read replicas: what routing adds to a request, and how much of a read-heavy
load the primary still serves. Runs on a PostgreSQL primary and a streaming
replica started from the ``pgserver`` binaries (see ``tests/pgcluster.py``).
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import random
import time
import typing as t

from flask import Flask
from itsdangerous import URLSafeSerializer

from flask_uow import after_begin
from flask_uow import UnitOfWork
from tests.pgcluster import Cluster

from .apps import add_routes
from .apps import create_tables
from .apps import SEED_ROWS
from .requests import request_runner
from .requests import time_runners

DATABASE = "bench_replicas"
COOKIE = "uow_ryw"

#: What is timed: label -> (app, method, path, token), where token is the
#: position in the client's cookie: None, "old" (replayed) or "future".
CASES: dict[str, tuple[str, str, str, str | None]] = {
    "no database, no replicas": ("plain", "GET", "/nodb", None),
    "no database, with a replica": ("replicated", "GET", "/nodb", None),
    "read one row, no replicas": ("plain", "GET", "/one/500", None),
    "read one row, from the replica": ("replicated", "GET", "/one/500", None),
    "read one row, token replayed": ("replicated", "GET", "/one/500", "old"),
    "read one row, token not replayed": ("replicated", "GET", "/one/500", "future"),
    "insert one row, no replicas": ("plain", "POST", "/insert", None),
    "insert one row, with a replica": ("replicated", "POST", "/insert", None),
}


#: The case each one is compared with.
BASELINES = {
    "no database, no replicas": "no database, no replicas",
    "no database, with a replica": "no database, no replicas",
    "read one row, no replicas": "read one row, no replicas",
    "read one row, from the replica": "read one row, no replicas",
    "read one row, token replayed": "read one row, no replicas",
    "read one row, token not replayed": "read one row, no replicas",
    "insert one row, no replicas": "insert one row, no replicas",
    "insert one row, with a replica": "insert one row, no replicas",
}


@dataclasses.dataclass
class Share:
    requests: int
    reads: int
    errors: int
    primary_units: int
    replica_units: int
    primary_commits: int
    replica_commits: int


@dataclasses.dataclass
class Result:
    medians_us: dict[str, float]
    share: Share


def build(primary: str, replica: str | None) -> tuple[Flask, UnitOfWork]:
    app = Flask("replicas" if replica else "plain")
    app.config["SECRET_KEY"] = "benchmark"
    entry: dict[str, t.Any] = {"url": primary}
    if replica is not None:
        entry["replicas"] = [replica]
    app.config["UOW_ENGINES"] = {"default": entry}
    uow = UnitOfWork(app)
    add_routes(app, lambda: uow.session, commit=False)
    return app, uow


def token(app: Flask, lsn: int) -> str:
    serializer = URLSafeSerializer(
        str(app.secret_key), salt="flask-uow.read-your-writes"
    )
    return serializer.dumps({"lsn": {"default": lsn}, "until": {}})


def commits(cluster: Cluster) -> tuple[int, int]:
    query = f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{DATABASE}'"
    return int(cluster.primary.scalar(query)), int(cluster.replica.scalar(query))


def read_share(
    cluster: Cluster, primary: str, replica: str, requests: int, clients: int
) -> Share:
    """Send *requests* requests, 90 % reads of one row and 10 % inserts,
    from *clients* clients that keep their cookies, taking turns at random.
    """
    app, uow = build(primary, replica)
    roles = {"primary": 0, "replica": 0}

    def count(sender: Flask, *, role: str, **extra: t.Any) -> None:
        roles[role] += 1

    rng = random.Random(42)
    testers = [app.test_client() for _ in range(clients)]
    errors = reads = 0
    before = commits(cluster)
    with after_begin.connected_to(count, app):
        for _ in range(requests):
            client = rng.choice(testers)
            if rng.random() < 0.9:
                reads += 1
                response = client.get(f"/one/{rng.randint(1, SEED_ROWS)}")
            else:
                response = client.post("/insert")
            errors += response.status_code >= 400
    uow.dispose_engines(app)  # Backends that exit report their statistics.
    time.sleep(1.5)
    after = commits(cluster)
    return Share(
        requests,
        reads,
        errors,
        roles["primary"],
        roles["replica"],
        after[0] - before[0],
        after[1] - before[1],
    )


def run(rounds: int, per_round: int, share_requests: int) -> Result:
    cluster = Cluster.start()
    try:
        cluster.primary.scalar(f'CREATE DATABASE "{DATABASE}"')
        primary = cluster.primary.url(DATABASE).render_as_string(False)
        replica = cluster.replica.url(DATABASE).render_as_string(False)
        create_tables(primary)
        cluster.wait_replayed()
        apps = {"plain": build(primary, None), "replicated": build(primary, replica)}
        old = token(apps["replicated"][0], 1)
        future = token(apps["replicated"][0], 2**62)
        runners = {}
        for name, (which, method, path, kind) in CASES.items():
            app = apps[which][0]
            cookie = {"old": old, "future": future}.get(kind or "")
            header = None if cookie is None else f"{COOKIE}={cookie}"
            runners[name] = request_runner(app, method, path, cookie=header)
        medians = time_runners(runners, rounds, per_round)
        for app, uow in apps.values():
            uow.dispose_engines(app)
        cluster.wait_replayed()
        share = read_share(cluster, primary, replica, share_requests, clients=20)
        return Result(medians, share)
    finally:
        cluster.stop()


def report(
    rounds: int,
    per_round: int,
    share_requests: int,
    table: cabc.Callable[[list[str], list[list[str]]], list[str]],
) -> tuple[list[str], list[str]]:
    """Run the read-replica benchmark; its lines for the docs and its
    failures.
    """
    result = run(rounds, per_round, share_requests)
    medians = result.medians_us
    rows = []
    for case, median in medians.items():
        base = BASELINES[case]
        added = "" if base == case else f"{median - medians[base]:+.0f}"
        rows.append([case, f"{median:.1f}", added])
    share = result.share
    on_primary = share.primary_units / (share.primary_units + share.replica_units)
    lines = [
        "**Read replicas** (a PostgreSQL primary and one streaming replica on"
        f" Unix sockets): median microseconds per request over {rounds} rounds"
        f" of {per_round} requests, and what routing adds to the same request"
        " without replicas.",
        "",
        *table(["request", "µs", "added µs"], rows),
        "",
        f"A load of {share.requests} requests from 20 clients that keep their"
        f" cookies, {share.reads} of them reads of one row and the rest"
        f" inserts: {share.errors} errors; units of work on the primary:"
        f" {share.primary_units} ({on_primary:.1%}), on the replica:"
        f" {share.replica_units}. ``pg_stat_database`` counted"
        f" {share.primary_commits} commits on the primary (each insert, and"
        f" the query for its WAL position) and {share.replica_commits} on the"
        " replica (each read, and the query for its position and lag).",
        "",
    ]
    failures = []
    if share.errors or not share.replica_units:
        failures.append("the read-replica load had errors or used no replica")
    return lines, failures
