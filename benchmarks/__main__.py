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
from . import guard
from . import memory
from . import replicas
from . import requests
from . import twophase
from .apps import VARIANTS

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
                results, no_session = requests.run(backend, url, rounds, per_round)
                if not no_session:
                    failures.append(
                        f"{backend}: a request without the database created a session"
                    )
                rows = []
                for r in results:
                    cells = [r.kind]
                    for variant in VARIANTS:
                        cells.append(f"{r.median_us[variant]:.1f}")
                        if variant != "baseline":
                            cells[-1] += f" ({r.ratio(variant):.3f})"
                    rows.append(cells)
                lines += [
                    f"**{backend}**: median microseconds per request over {rounds}"
                    f" rounds of {per_round} requests (ratio to the baseline)."
                    f" A request without the database created"
                    f" {'no' if no_session else 'a'} session.",
                    "",
                    *table(["request", *VARIANTS], rows),
                    "",
                ]

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

            print("Memory...", file=sys.stderr)
            mem = memory.run("SQLite", urls["SQLite"], memory_requests, 10_000)
            lines += [
                f"**Memory**: {mem.requests} requests through flask_uow (transactional"
                f" views, an after_commit receiver) after {mem.warmup} to warm up:"
                f" traced memory grew by {mem.growth_bytes} bytes"
                f" ({mem.growth_mb:.3f} MB; the limit is 1 MB).",
                "",
            ]
            if mem.growth_mb > 1:
                failures.append(f"memory grew by {mem.growth_mb:.2f} MB")

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
