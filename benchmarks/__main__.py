"""Run every benchmark and write the results for the docs.

    python -m benchmarks            # everything, about ten minutes
    python -m benchmarks --quick    # fewer rounds, to try it out

PostgreSQL comes from the ``pgserver`` package unless
``UOW_BENCH_DATABASE_URL`` names a server (its database is dropped and
refilled).
"""

from __future__ import annotations

import argparse
import collections.abc as cabc
import contextlib
import importlib.metadata
import os
import pathlib
import platform
import shlex
import sqlite3
import sys
import tempfile
import warnings

import sqlalchemy as sa

from . import e2e
from . import expiry
from . import guard
from . import load
from . import memory
from . import outbox
from . import recording
from . import replicas
from . import requests
from . import telemetry
from . import twophase

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PACKAGES = [
    "flask",
    "werkzeug",
    "sqlalchemy",
    "flask-sqlalchemy",
    "psycopg",
    "gunicorn",
]


@contextlib.contextmanager
def postgresql(folder: pathlib.Path) -> cabc.Iterator[str]:
    url = os.environ.get("UOW_BENCH_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()


def machine(pg_url: str) -> list[str]:
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        server = conn.execute(sa.text("SHOW server_version")).scalar()
    engine.dispose()
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
    cpu = platform.processor() or "unknown CPU"
    return [
        f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu}",
        f"Python {platform.python_version()}; {versions}",
        f"PostgreSQL {server} (local, Unix socket);"
        f" SQLite {sqlite3.sqlite_version} (file)",
    ]


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """An RST simple table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    rule = "  ".join("=" * w for w in widths)

    def fmt(cells: list[str]) -> str:
        padded = (c.ljust(w) for c, w in zip(cells, widths, strict=True))
        return "  ".join(padded).rstrip()

    return [rule, fmt(headers), rule, *(fmt(r) for r in rows), rule]


def sqlite_load(folder: pathlib.Path, quick: bool, failures: list[str]) -> list[str]:
    """The example app under gunicorn (4 workers) on a SQLite file: transfers,
    and a 90 % GET mix, with flask_uow's SQLite defaults and as before them.
    """
    requests = 10 if quick else 50
    rows: list[list[str]] = []
    for mix, read_share in (("transfers", 0.0), ("90 % GET", 0.9)):
        for label, options in (
            ("IMMEDIATE writes, WAL (default)", None),
            ("deferred BEGIN, rollback journal", load.SQLITE_BEFORE),
        ):
            path = folder / f"load-{len(rows)}.db"
            result = load.run(
                f"sqlite:///{path}",
                options,
                requests=requests,
                read_share=read_share,
                retries=3,
            )
            if options is None and (result.errors or result.problems):
                failures.append(f"SQLite {mix}: {result.errors} errors")
            rows.append(
                [
                    mix,
                    label,
                    str(result.requests),
                    str(result.errors),
                    str(len(result.problems)),
                    f"{result.throughput:.0f}",
                ]
            )
    return [
        f"**SQLite under concurrent writes**: the example app under gunicorn (4"
        f" workers) on a SQLite file, 8 clients x {requests} requests among 5"
        " accounts, transfers retried 3 times; errors are responses of status"
        " 400 or more (503 when the database stayed locked through the"
        " retries), problems what the balances, audit log and notifications"
        " disagree with.",
        "",
        *table(
            ["load", "SQLite settings", "requests", "errors", "problems", "requests/s"],
            rows,
        ),
        "",
    ]


def outbox_section(
    urls: dict[str, str],
    folder: pathlib.Path,
    rounds: int,
    per_round: int,
    failures: list[str],
) -> list[str]:
    """A request enqueueing one Celery task through the outbox, against the
    same request sending it with on_commit, on a Redis of its own.
    """
    if outbox.redis_binary() is None:
        return [
            "**Background tasks**: not measured, ``redis-server`` is not installed.",
            "",
        ]
    rows = []
    for backend, url in urls.items():
        result = outbox.run(backend, url, folder, rounds, per_round)
        if result.unsent:
            failures.append(f"outbox on {backend}: {result.unsent} rows left unsent")
        rows.append(
            [
                backend,
                f"{result.median_us['on_commit']:.1f}",
                f"{result.median_us['outbox']:.1f}",
                f"{result.ratio:.2f}",
                f"{result.unsent} of {result.rows}",
            ]
        )
    return [
        "**Background tasks**: a request that inserts one row and sends one"
        " Celery task to Redis (a server of its own on loopback), median"
        f" microseconds over {rounds} rounds of {per_round} requests: with"
        " ``uow.on_commit(lambda: task.delay(...))``, and with ``uow.enqueue``"
        " (one more INSERT in the unit's transaction, the publish, then one"
        " UPDATE in a transaction of its own). Rows left unsent by the fast"
        " path: should be 0.",
        "",
        *table(["backend", "on_commit", "outbox", "ratio", "unsent"], rows),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--write",
        default=str(DOCS / "benchmark_results.inc"),
        help="where to write the results (RST); '-' for nowhere",
    )
    args = parser.parse_args(argv)
    rounds, per_round = (5, 50) if args.quick else (25, 100)
    memory_requests = 10_000 if args.quick else 100_000
    seconds = 3.0 if args.quick else 10.0
    command = "python -m benchmarks" + (" --quick" if args.quick else "")

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        with postgresql(folder / "pg") as pg_url:
            urls = {"SQLite": f"sqlite:///{folder / 'bench.db'}", "PostgreSQL": pg_url}
            lines = [f"Command: ``{command}``", ""]
            lines += [f"| {line}" for line in machine(pg_url)] + [""]
            failures = []

            for backend, url in urls.items():
                print(f"Requests on {backend}...", file=sys.stderr)
                section, failed = requests.report(
                    backend, url, rounds, per_round, table
                )
                lines += section
                failures += failed

            print("Aborted-transaction check...", file=sys.stderr)
            checks = [
                guard.run(b, u, tmp, 10_000 if args.quick else 200_000)
                for b, u in urls.items()
            ]
            lines += [
                "**Aborted-transaction check** (made before every outermost"
                " commit; no statement is sent):"
                + ",".join(
                    f" {c.ns_per_commit:.0f} ns per commit on {c.backend}"
                    for c in checks
                )
                + ".",
                "",
            ]

            print("Outbox...", file=sys.stderr)
            lines += outbox_section(urls, folder, rounds, per_round, failures)

            print("Two-phase commit...", file=sys.stderr)
            tp = twophase.run(folder / "pg2pc", rounds, per_round)
            without, with_ = (
                tp.median_us["without two-phase"],
                tp.median_us["two-phase"],
            )
            lines += [
                "**Commit across two databases** (PostgreSQL, two databases on"
                " one server): a request that inserts one row in each, median"
                f" microseconds over {rounds} rounds of {per_round} requests:"
                f" {without:.1f} without two-phase commit, {with_:.1f} with"
                f" ``UOW_TWO_PHASE`` ({with_ / without:.2f}x).",
                "",
            ]
            if tp.rows["default"] != tp.rows["other"] or tp.prepared_left:
                failures.append(
                    f"two-phase commit: rows {tp.rows}, {tp.prepared_left} prepared"
                    " transactions left"
                )

            print("Expiry...", file=sys.stderr)
            expiry_rows = []
            readable = True
            for backend, url in urls.items():
                kept = expiry.run(backend, url, rounds, per_round)
                if not kept.readable_after:
                    readable = False
                    failures.append(f"{backend}: objects expired after the request")
                expiry_rows.append(
                    [
                        backend,
                        f"{kept.expiring_us:.1f}",
                        f"{kept.keeping_us:.1f}",
                        f"{kept.saved_us:.1f} ({kept.saved_us / kept.expiring_us:.1%})",
                    ]
                )
            lines += [
                "**Expiry**: median microseconds to commit and close a session"
                f" that read {expiry.OBJECTS} objects, over"
                f" {rounds} rounds of {per_round}, when the commit expires the"
                " objects and when it does not (as at the end of a request)."
                f" Objects loaded in a request were {'' if readable else 'not '}"
                "readable after it.",
                "",
                *table(["backend", "expiring", "not expiring", "saved"], expiry_rows),
                "",
            ]

            for backend, url in urls.items():
                print(f"Recording on {backend}...", file=sys.stderr)
                recorded, listeners = recording.run(url, rounds, per_round)
                if listeners:
                    failures.append(
                        f"{backend}: recording off attached {listeners} listeners"
                    )
                rows = []
                for rec in recorded:
                    cells = [rec.kind]
                    for variant in recording.VARIANTS:
                        base = variant.removesuffix("-recording")
                        cells.append(f"{rec.median_us[variant]:.1f}")
                        if base != variant:
                            ratio = rec.median_us[variant] / rec.median_us[base]
                            cells[-1] += f" ({ratio:.3f})"
                    rows.append(cells)
                lines += [
                    f"**Recording statements, {backend}**: median microseconds per"
                    f" request over {rounds} rounds of {per_round} requests (ratio"
                    " to the same library with recording off). Cursor listeners"
                    f" attached by flask_uow with recording off: {listeners}.",
                    "",
                    *table(["request", *recording.VARIANTS], rows),
                    "",
                ]

            for backend, url in urls.items():
                print(f"Telemetry on {backend}...", file=sys.stderr)
                section, failed = telemetry.run_report(
                    backend, url, rounds, per_round, table
                )
                lines += section
                failures += failed

            for variant, what in [
                ("uow-transactional", "transactional views, an after_commit receiver"),
                ("uow-recording", "recording statements and detecting N+1"),
            ]:
                print(f"Memory of {variant}...", file=sys.stderr)
                mem = memory.run(
                    "SQLite", urls["SQLite"], memory_requests, 10_000, variant
                )
                lines += [
                    f"**Memory, {variant}**: {mem.requests} requests through"
                    f" flask_uow ({what}) after {mem.warmup} to warm up: traced"
                    f" memory grew by {mem.growth_bytes} bytes"
                    f" ({mem.growth_mb:.3f} MB; the limit is 1 MB).",
                    "",
                ]
                if mem.growth_mb > 1:
                    failures.append(f"{variant}: memory grew by {mem.growth_mb:.2f} MB")

            print("End to end...", file=sys.stderr)
            result = e2e.run(pg_url, workers=2, clients=4, seconds=seconds)
            rows = [
                [
                    k.kind,
                    str(k.requests),
                    str(k.errors),
                    f"{k.throughput:.0f}",
                    f"{k.p50_ms:.1f}",
                    f"{k.p99_ms:.1f}",
                ]
                for k in result.kinds
            ]
            lines += [
                f"**End to end**: the example app under gunicorn ({result.workers}"
                f" workers) on PostgreSQL, {result.clients} keep-alive clients on"
                f" loopback for {result.seconds:.0f} s per kind. After the load,"
                f" connections inside a transaction: {result.in_transaction_after};"
                f" idle in the pools: {result.connections_after}.",
                "",
                *table(
                    ["kind", "requests", "errors", "requests/s", "p50 ms", "p99 ms"],
                    rows,
                ),
                "",
            ]
            if result.in_transaction_after:
                failures.append("connections were left inside a transaction")

            print("SQLite under concurrent writes...", file=sys.stderr)
            lines += sqlite_load(folder, args.quick, failures)
    print("Read replicas...", file=sys.stderr)
    share_requests = 500 if args.quick else 5000
    section, failed = replicas.report(rounds, per_round, share_requests, table)
    lines += section
    failures += failed

    text = "\n".join(lines)
    print(text)
    if args.write != "-":
        pathlib.Path(args.write).write_text(
            ".. Written by: "
            + shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])])
            + "\n\n"
            + text
        )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
