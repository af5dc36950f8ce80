"""Time and Python calls per request of every variant, called as WSGI apps
(no network), timed interleaved round by round so that all of them see the
same machine state.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import gc
import io
import statistics
import time
import typing as t

import sqlalchemy.orm as orm
from flask import Flask
from werkzeug.test import EnvironBuilder

from . import calls
from .apps import BUILDERS
from .apps import create_tables
from .apps import NO_DATABASE
from .apps import VARIANTS
from .calls import Count

#: What is timed: label -> (method, path).
KINDS = {
    "no database": ("GET", "/nodb"),
    "read one row by key": ("GET", "/one/500"),
    "read 20 rows": ("GET", "/twenty"),
    "insert one row": ("POST", "/insert"),
    "insert 10 rows": ("POST", "/insert10"),
}


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
    if not status.startswith(("200", "201")):
        raise RuntimeError(f"The benchmark request failed: {status}.")
    return None


def request_runner(
    app: Flask, method: str, path: str, cookie: str | None = None
) -> cabc.Callable[[], None]:
    """A function that sends one request to *app* and reads the response;
    *cookie* is a ``Cookie`` header to send with it.
    """
    base = EnvironBuilder(method=method, path=path).get_environ()
    if cookie is not None:
        base["HTTP_COOKIE"] = cookie

    def run() -> None:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        body = app(environ, _start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return run


@dataclasses.dataclass
class Result:
    backend: str
    kind: str
    #: Median time per request in microseconds, by variant.
    median_us: dict[str, float]
    #: Python calls per request, by variant.
    calls: dict[str, Count]

    def ratio(self, variant: str, to: str = "baseline") -> float:
        return self.median_us[variant] / self.median_us[to]


def live_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, orm.Session) for o in gc.get_objects())


def time_runners(
    variants: dict[str, cabc.Callable[[], None]], rounds: int, per_round: int
) -> dict[str, float]:
    """The median time per request of each variant, in microseconds."""
    for call in variants.values():  # Warm up: pools, caches, imports.
        for _ in range(per_round):
            call()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants.items())
    for round_ in range(rounds):
        gc.collect()
        # A B C D, B C D A, C D A B, ...: interleaved, and each variant
        # takes every position equally often.
        shift = round_ % len(order)
        for name, call in order[shift:] + order[:shift]:
            start = time.perf_counter_ns()
            for _ in range(per_round):
                call()
            elapsed = time.perf_counter_ns() - start
            samples[name].append(elapsed / per_round / 1000)
    return {name: statistics.median(s) for name, s in samples.items()}


def run(
    backend: str, url: str, rounds: int, per_round: int
) -> tuple[list[Result], bool]:
    """Count the calls of every kind of request on every variant against
    *url*, each variant alone, then time them side by side.

    Returns the results and whether flask_uow created no session for the
    requests that do not use the database.
    """
    create_tables(url)
    counts = calls.count_alone(url)
    built = {name: BUILDERS[name](url) for name in VARIANTS}
    try:
        runners = {
            kind: {
                name: request_runner(app, method, path)
                for name, (app, _) in built.items()
                if kind == "no database" or name not in NO_DATABASE
            }
            for kind, (method, path) in KINDS.items()
        }
        before = live_sessions()
        for _ in range(200):
            runners["no database"]["uow"]()
        no_session = live_sessions() == before
        results = []
        for kind, variants in runners.items():
            medians = time_runners(variants, rounds, per_round)
            results.append(Result(backend, kind, medians, counts[kind]))
        return results, no_session
    finally:
        for _, dispose in built.values():
            dispose()


Table = cabc.Callable[[list[str], list[list[str]]], list[str]]


def report(
    backend: str, url: str, rounds: int, per_round: int, table: Table
) -> tuple[list[str], list[str]]:
    """Run the requests on *backend*; the RST section for the results, and
    the failures (a session created without the database, a call budget
    exceeded).
    """
    results, no_session = run(backend, url, rounds, per_round)
    failures = []
    if not no_session:
        failures.append(f"{backend}: a request without the database created a session")
    rows = []
    for r in results:
        cells = [r.kind]
        for variant in VARIANTS:
            if variant in r.median_us:
                cells.append(f"{r.median_us[variant]:.1f} / {r.calls[variant]}")
            else:
                cells.append("")
        ref, _ = calls.reference(r.kind)
        cells.append(f"{r.ratio('uow'):.3f}")
        cells.append(f"{r.ratio('uow', ref):.3f} ({ref})")
        rows.append(cells)
    budget_rows, over = calls.check(backend, {r.kind: r.calls for r in results})
    failures += over
    lines = [
        f"**{backend}**: median microseconds / Python calls per request; the"
        f" times over {rounds} rounds of {per_round} requests. The last two"
        " columns give uow's time as a ratio to the baseline, and to the app"
        " it is held to (target 1.03): plain Flask for the request without the"
        " database, the hand-written app with the same guarantees for the"
        " others. A request without the database created"
        f" {'no' if no_session else 'a'} session.",
        "",
        *table(["request", *VARIANTS, "uow / baseline", "uow / held to"], rows),
        "",
        f"**{backend}, calls per request against issue 19's budgets**: uow may"
        f" make {calls.NO_DATABASE_BUDGET} calls more than plain Flask without"
        f" the database, {calls.DATABASE_BUDGET} more than same-guarantees with"
        " it (cProfile, builtins included, after warming up; the same in every"
        f" batch of {calls.PROFILED} requests).",
        "",
        *table(calls.BUDGET_HEADERS, budget_rows),
        "",
    ]
    return lines, failures
