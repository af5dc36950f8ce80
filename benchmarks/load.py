"""A bounded transfer load on the example app under gunicorn, and the checks
that nothing was lost: balances, the audit log, the notifications.

The test suite runs it to prove correctness under concurrency (no errors,
every committed transfer accounted for exactly once); the benchmarks run it
to compare throughput and error counts of SQLite settings.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

import sqlalchemy as sa

from .e2e import _free_port
from .e2e import _wait_until_up

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Opening balance of every account, in cents: no transfer can overdraw.
BALANCE = 10**9
#: The engine entry that gives back SQLite as flask_uow ran it before: plain
#: (deferred) BEGIN, rollback journal, no pragmas.
SQLITE_BEFORE: dict[str, t.Any] = {
    "sqlite_begin": "deferred",
    "sqlite_pragmas": {"journal_mode": "DELETE", "foreign_keys": None},
}


@dataclasses.dataclass
class Transfer:
    source: int
    target: int
    amount: int


@dataclasses.dataclass
class LoadResult:
    #: Responses by status code.
    statuses: collections.Counter[int]
    #: The transfers answered 201.
    committed: list[Transfer]
    #: GET requests answered 200.
    reads: int
    seconds: float
    #: What the database and the outbox disagree with, one line each.
    problems: list[str]
    #: The end of the server's log, to explain a failure.
    log: str
    #: PostgreSQL only: connections to the database left inside a
    #: transaction once every client had its answers (0 when all went back
    #: to the pools clean).
    in_transaction_after: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 400)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def _entry(url: str, options: cabc.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return {"default": {"url": url, **options}}


def _seed(engines: dict[str, t.Any], accounts: int) -> list[int]:
    from example_app import create_app
    from example_app import uow
    from example_app.models import Account
    from example_app.models import Base

    app = create_app({"UOW_ENGINES": engines})
    try:
        with app.app_context():
            Base.metadata.drop_all(uow.engine)
            Base.metadata.create_all(uow.engine)
            with uow.transaction() as session:
                opened = [
                    Account(name=f"account{i}", balance=BALANCE)
                    for i in range(accounts)
                ]
                session.add_all(opened)
                session.flush()
                return [account.id for account in opened]
    finally:
        uow.dispose_engines(app)


@contextlib.contextmanager
def serve(
    config: dict[str, t.Any],
    workers: int,
    env: cabc.Mapping[str, str] | None = None,
    *,
    worker_class: str = "sync",
    preload: bool = False,
    app: str | None = None,
) -> cabc.Iterator[tuple[int, list[str]]]:
    """Serve ``example_app:create_app(config)`` (or the gunicorn app spec
    *app*) with gunicorn on loopback; yield its port, and a list that
    receives the end of its log once it has stopped.

    :param worker_class: gunicorn's ``--worker-class``, such as ``"gevent"``.
    :param preload: Create the app in the master process, before forking the
        workers (``--preload``).
    """
    logs: list[str] = []
    home = tempfile.TemporaryDirectory()  # gunicorn puts its control socket there.
    port = _free_port()
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
                "--graceful-timeout",
                "5",
                "--worker-class",
                worker_class,
                *(["--preload"] if preload else []),
                app or f"example_app:create_app({config!r})",
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {}), "HOME": home.name},
            stdout=log,
            stderr=log,
        )
        try:
            _wait_until_up(port, process)
            yield port, logs
        finally:
            process.terminate()
            process.wait(timeout=30)
            home.cleanup()
            log.seek(0)
            logs.append(log.read()[-4000:].decode(errors="replace"))


def _client(
    port: int,
    number: int,
    requests: int,
    read_share: float,
    accounts: list[int],
    statuses: list[int],
    committed: list[Transfer],
) -> None:
    rng = random.Random(number)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", "X-User": "load"}
    try:
        for i in range(requests):
            if rng.random() < read_share:
                conn.request("GET", "/accounts", headers=headers)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                continue
            source, target = rng.sample(accounts, 2)
            # Unique amounts tell the transfers apart in the audit log and
            # the notifications.
            transfer = Transfer(source, target, number * requests + i + 1)
            body = {"from": source, "to": target, "amount": transfer.amount}
            conn.request("POST", "/transfers", json.dumps(body), headers)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.status == 201:
                committed.append(transfer)
    finally:
        conn.close()


def run(
    url: str,
    options: cabc.Mapping[str, t.Any] | None = None,
    *,
    workers: int = 4,
    clients: int = 8,
    requests: int = 50,
    accounts: int = 5,
    read_share: float = 0.0,
    retries: int | None = None,
    worker_class: str = "sync",
    preload: bool = False,
) -> LoadResult:
    """Open *accounts* accounts on *url* (its ledger tables are dropped and
    made again), serve the example app on it with *workers* gunicorn workers,
    send *requests* requests from each of *clients* threads (a *read_share*
    of them ``GET /accounts``, the others transfers), and check the outcome.

    :param options: flask_uow options of the engine entry, such as
        ``sqlite_begin`` (``SQLITE_BEFORE`` for the old behaviour).
    :param retries: The transfer view's retries, if not the example app's.
    :param worker_class: gunicorn's worker class (``"sync"``, ``"gevent"``...).
    :param preload: Serve with ``--preload``: the app, which queries the
        database when it is created, is made before the workers are forked.
    """
    engines = _entry(url, options or {})
    ids = _seed(engines, accounts)
    with tempfile.TemporaryDirectory() as tmp:
        outbox = pathlib.Path(tmp) / "outbox.txt"
        outbox.touch()
        config = {"UOW_ENGINES": engines, "LEDGER_OUTBOX_FILE": str(outbox)}
        statuses: list[int] = []
        committed: list[Transfer] = []
        env = {} if retries is None else {"LEDGER_TRANSFER_RETRIES": str(retries)}
        with serve(
            config, workers, env, worker_class=worker_class, preload=preload
        ) as (port, logs):
            threads = [
                threading.Thread(
                    target=_client,
                    args=(port, n, requests, read_share, ids, statuses, committed),
                )
                for n in range(clients)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            in_transaction = in_transaction_after(url)
        notifications = outbox.read_text().splitlines()
    counts = collections.Counter(statuses)
    problems = check(url, ids, committed, notifications)
    return LoadResult(
        counts, committed, counts[200], seconds, problems, logs[0], in_transaction
    )


def in_transaction_after(url: str, settle: float = 2.0) -> int:
    """On PostgreSQL, the other connections to *url*'s database that are
    still inside a transaction once the clients are done, while the server
    runs; 0 elsewhere. A request's teardown may end its transaction just
    after the client got the response, so it is asked again for up to
    *settle* seconds until none is.
    """
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    if engine.dialect.name != "postgresql":
        return 0
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
    )
    deadline = time.monotonic() + settle
    try:
        with engine.connect() as conn:
            while True:
                count = int(conn.execute(query).scalar_one())
                conn.rollback()
                if not count or time.monotonic() > deadline:
                    return count
                time.sleep(0.05)
    finally:
        engine.dispose()


def check(
    url: str, ids: list[int], committed: list[Transfer], notifications: list[str]
) -> list[str]:
    """Compare the database and the notifications with the committed
    transfers: balances, entries, the audit trail of each account, and one
    notification per transfer.
    """
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            balances: dict[int, int] = dict(
                conn.execute(sa.text("SELECT id, balance FROM accounts")).all()
            )
            names: dict[int, str] = dict(
                conn.execute(sa.text("SELECT id, name FROM accounts")).all()
            )
            entries = sorted(
                conn.execute(sa.text("SELECT account_id, amount FROM entries")).all()
            )
            audit = conn.execute(
                sa.text(
                    "SELECT operation, table_name, row_id, changes FROM audit_log"
                    " WHERE actor = 'load' ORDER BY id"
                )
            ).all()
    finally:
        engine.dispose()
    problems = []
    expected = {account: BALANCE for account in ids}
    for transfer in committed:
        expected[transfer.source] -= transfer.amount
        expected[transfer.target] += transfer.amount
    if balances != expected:
        problems.append(f"balances {balances}, expected {expected}")
    if sum(balances.values()) != BALANCE * len(ids):
        problems.append("the total of the balances changed")
    wanted = sorted(
        pair
        for x in committed
        for pair in ((x.source, -x.amount), (x.target, x.amount))
    )
    if [tuple(row) for row in entries] != wanted:
        problems.append(f"{len(entries)} entries, expected {len(wanted)}")
    problems += _check_audit(audit, ids, committed, wanted)
    sent = collections.Counter(notifications)
    for transfer in committed:
        message = (
            f"{names[transfer.source]} sent {transfer.amount} cents to"
            f" {names[transfer.target]}."
        )
        if sent.pop(message, 0) != 1:
            problems.append(f"not notified exactly once: {message}")
    if sent:
        problems.append(f"notified without a committed transfer: {sorted(sent)}")
    return problems


def _check_audit(
    audit: cabc.Sequence[t.Any],
    ids: list[int],
    committed: list[Transfer],
    entries: list[tuple[int, int]],
) -> list[str]:
    """Each account's audited balance changes chain from the opening balance
    to the final one, one change per transfer, in commit order.
    """
    problems = []
    inserted = sorted(
        (json.loads(row.changes)["account_id"][1], json.loads(row.changes)["amount"][1])
        for row in audit
        if (row.operation, row.table_name) == ("insert", "entries")
    )
    if inserted != entries:
        problems.append("the audited entries differ from the entries")
    changes: dict[int, list[list[int]]] = {account: [] for account in ids}
    for row in audit:
        if (row.operation, row.table_name) == ("update", "accounts"):
            changes[int(row.row_id)].append(json.loads(row.changes)["balance"])
    moved = collections.Counter(
        account for x in committed for account in (x.source, x.target)
    )
    for account, chain in changes.items():
        balance = BALANCE
        for old, new in chain:
            if old != balance:
                problems.append(f"account {account}: audit chain broken at {old}")
            balance = new
        if len(chain) != moved[account]:
            problems.append(
                f"account {account}: {len(chain)} audited changes for"
                f" {moved[account]} transfers"
            )
    others = [
        row
        for row in audit
        if (row.operation, row.table_name)
        not in {("insert", "entries"), ("update", "accounts")}
    ]
    if others:
        problems.append(f"unexpected audit rows: {others[:3]}")
    return problems
