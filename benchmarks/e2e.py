"""End to end: the example app under gunicorn on PostgreSQL, loaded from
loopback by a bounded load generator.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import pathlib
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACCOUNTS = 20


@dataclasses.dataclass
class KindResult:
    kind: str
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float


@dataclasses.dataclass
class E2EResult:
    workers: int
    clients: int
    seconds: float
    kinds: list[KindResult]
    #: Server connections of the app still inside a transaction after the load.
    in_transaction_after: int
    #: Server connections of the app open after the load (idle in the pools).
    connections_after: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited before it served a request.")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start listening within 30 seconds.")


def _seed(url: str) -> None:
    from example_app import create_app
    from example_app import uow
    from example_app.models import Account
    from example_app.models import Base

    app = create_app({"UOW_ENGINES": {"default": url}})
    with app.app_context():
        Base.metadata.drop_all(uow.engine)
        Base.metadata.create_all(uow.engine)
        with uow.transaction() as session:
            session.add_all(
                Account(name=f"account{i}", balance=10**9) for i in range(ACCOUNTS)
            )
    uow.dispose_engines(app)


def _client(
    port: int,
    kind: str,
    stop_at: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    rng = random.Random()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while time.monotonic() < stop_at:
            if kind == "read":
                method, path, body = "GET", "/accounts", None
            else:
                source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
                payload = {"from": source, "to": target, "amount": 1}
                method, path, body = "POST", "/transfers", json.dumps(payload)
            start = time.perf_counter()
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            if response.status >= 400:
                errors.append(response.status)
    finally:
        conn.close()


def _load(port: int, kind: str, clients: int, seconds: float) -> KindResult:
    latencies: list[float] = []
    errors: list[int] = []
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, kind, stop_at, latencies, errors))
        for _ in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return KindResult(
        kind,
        len(ordered),
        len(errors),
        len(ordered) / elapsed,
        statistics.median(ordered) * 1000,
        p99 * 1000,
    )


def _connections(url: str) -> tuple[int, int]:
    """(in a transaction, open) client connections to the app's database,
    not counting the one asking. Autovacuum workers, which a write load can
    start on the same database, are not clients.
    """
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    query = sa.text(
        "SELECT count(*) FILTER (WHERE state LIKE 'idle in transaction%%'"
        " OR state = 'active'), count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    with engine.connect() as conn:
        in_transaction, total = conn.execute(query).one()
    engine.dispose()
    return int(in_transaction), int(total)


def run(url: str, workers: int, clients: int, seconds: float) -> E2EResult:
    """Serve the example app with gunicorn on *url* and load it: reads, then
    transfers, each for *seconds* with *clients* concurrent connections.
    """
    _seed(url)
    port = _free_port()
    env = dict(os.environ, LEDGER_DATABASE_URL=url)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "--keep-alive",
                "30",
                "example_app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            _wait_until_up(port, process)
            kinds = [_load(port, k, clients, seconds) for k in ("read", "transfer")]
            # The load has stopped; the workers and their pools are still up.
            time.sleep(0.5)
            in_transaction, total = _connections(url)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return E2EResult(workers, clients, seconds, kinds, in_transaction, total)
