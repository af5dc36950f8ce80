"""Python function calls per request, counted with cProfile.

Unlike time, the number of calls a request makes does not change from run to
run, so it can be checked in CI: flask_uow's budgets against the plain Flask
app and against the hand-written app with the same guarantees are below.

    python -m benchmarks.calls             # counts and budgets on SQLite
    python -m benchmarks.calls --top 25    # and where uow's calls go

The count includes builtins and the few calls of the benchmark's own WSGI
call (``request_runner``), the same for every variant.
"""

from __future__ import annotations

import argparse
import collections.abc as cabc
import cProfile
import dataclasses
import gc
import pathlib
import pstats
import sys
import tempfile

#: Issue 19: a request that never touches ``uow.session`` makes at most this
#: many Python calls more than the plain Flask app with one teardown hook.
NO_DATABASE_BUDGET = 20
#: Issue 19: a request that uses the database makes at most this many Python
#: calls more than the hand-written app with the same guarantees, on every path.
DATABASE_BUDGET = 60

#: Requests sent before counting, so that imports, compiled-statement caches
#: and the pool's first connection are not counted.
WARMUP = 10
#: Requests per profiled batch; the per-request count is a batch's calls
#: divided by this, and every batch must agree.
PROFILED = 20
BATCHES = 2

#: The variant whose calls are flask_uow's budget.
CHECKED = "uow"

#: pstats key: (file, line, function name).
Function = tuple[str, int, str]


def reference(kind: str) -> tuple[str, int]:
    """The variant that ``uow`` is compared with for a *kind* of request,
    and the budget of extra calls per request.
    """
    if kind == "no database":
        return "plain", NO_DATABASE_BUDGET
    return "same-guarantees", DATABASE_BUDGET


@dataclasses.dataclass
class Count:
    """Python calls per request of one variant and kind of request."""

    #: Calls of each profiled batch of :data:`PROFILED` requests.
    batches: list[int]
    #: Calls per function in the last batch, for :func:`breakdown`.
    functions: dict[Function, int]

    @property
    def stable(self) -> bool:
        """Every batch made the same number of calls, a multiple of the
        number of requests.
        """
        first = self.batches[0]
        return first % PROFILED == 0 and all(b == first for b in self.batches)

    @property
    def per_request(self) -> float:
        return max(self.batches) / PROFILED

    def __str__(self) -> str:
        if self.stable:
            return str(self.batches[0] // PROFILED)
        return f"{self.per_request:.1f}?"


def _profile(call: cabc.Callable[[], None]) -> dict[Function, int]:
    """Calls per function over one batch of requests, with the garbage
    collector off so that when it runs does not change the count.
    """
    profiler = cProfile.Profile(builtins=True)
    gc.collect()
    gc.disable()
    try:
        profiler.enable()
        for _ in range(PROFILED):
            call()
        profiler.disable()
    finally:
        gc.enable()
    stats = pstats.Stats(profiler)
    functions = {
        key: value[1]
        for key, value in stats.stats.items()  # type: ignore[attr-defined]
        if "_lsprof.Profiler" not in key[2]
    }
    # pstats' own total, less the profiler's disable() call.
    total = stats.total_calls - sum(  # type: ignore[attr-defined]
        value[1]
        for key, value in stats.stats.items()  # type: ignore[attr-defined]
        if "_lsprof.Profiler" in key[2]
    )
    if total != sum(functions.values()):
        raise RuntimeError("pstats' total of calls disagrees with its functions.")
    return functions


def count(call: cabc.Callable[[], None]) -> Count:
    """Warm up, then count the calls of :data:`BATCHES` batches of requests."""
    for _ in range(WARMUP):
        call()
    batches = []
    functions: dict[Function, int] = {}
    for _ in range(BATCHES):
        functions = _profile(call)
        batches.append(sum(functions.values()))
    return Count(batches, functions)


def count_alone(url: str) -> dict[str, dict[str, Count]]:
    """Count every kind of request on every variant against *url*, each
    variant built alone, counted and disposed before the next is built: what
    one app costs, whatever the others connect to process-wide signals.
    """
    from .apps import BUILDERS
    from .apps import NO_DATABASE
    from .apps import VARIANTS
    from .requests import KINDS
    from .requests import request_runner

    counts: dict[str, dict[str, Count]] = {kind: {} for kind in KINDS}
    for name in VARIANTS:
        app, dispose = BUILDERS[name](url)
        try:
            for kind, (method, path) in KINDS.items():
                if kind == "no database" or name not in NO_DATABASE:
                    counts[kind][name] = count(request_runner(app, method, path))
        finally:
            dispose()
        del app
        gc.collect()
    return counts


def check(
    backend: str, counts: dict[str, dict[str, Count]]
) -> tuple[list[list[str]], list[str]]:
    """Rows of the budget table for *counts* (kind -> variant -> calls),
    and the failures: every path where ``uow`` goes over its budget, or a
    count that is not the same in every batch.
    """
    rows, failures = [], []
    for kind, variants in counts.items():
        for variant, calls in variants.items():
            if not calls.stable:
                failures.append(
                    f"{backend}, {kind}, {variant}: the calls per batch of"
                    f" {PROFILED} requests were not the same in every batch"
                    f" ({calls.batches}); the call count is not deterministic."
                )
        if CHECKED not in variants:
            continue
        ref, budget = reference(kind)
        mine, theirs = variants[CHECKED].per_request, variants[ref].per_request
        extra = mine - theirs
        verdict = "within" if extra <= budget else f"{extra - budget:g} over"
        rows.append(
            [
                kind,
                ref,
                str(variants[ref]),
                str(variants[CHECKED]),
                f"{extra:+g}",
                str(budget),
                verdict,
            ]
        )
        if extra > budget:
            failures.append(
                f"{backend}, {kind}: {CHECKED} made {mine:g} Python calls per"
                f" request and {ref} {theirs:g}, {extra:g} more; the budget"
                f" (issue 19) is {budget} more. Profile it with"
                " 'python -m benchmarks.calls --top 25'."
            )
    return rows, failures


BUDGET_HEADERS = ["request", "reference", "calls", "uow calls", "extra", "budget", ""]


def _name(key: Function) -> str:
    file, line, name = key
    if file == "~":
        return name
    parts = pathlib.PurePath(file).parts
    for top in ("site-packages", "flask_uow", "benchmarks"):
        if top in parts:
            parts = parts[parts.index(top) + (top == "site-packages") :]
            break
    return f"{'/'.join(parts[-3:])}:{line}({name})"


def breakdown(mine: Count, theirs: Count, top: int) -> list[str]:
    """Where *mine* makes its calls: its *top* functions by calls per
    request beside *theirs*, then the functions whose counts differ most.
    """

    def per_request(c: Count) -> dict[Function, float]:
        return {k: n / PROFILED for k, n in c.functions.items()}

    a, b = per_request(mine), per_request(theirs)
    lines = [f"Top {top} functions by calls per request (this variant, reference):"]
    for key, n in sorted(a.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n:7g} {b.get(key, 0):7g}  {_name(key)}")
    diff = {k: a.get(k, 0) - b.get(k, 0) for k in a.keys() | b.keys()}
    lines.append(f"Top {top} differences (this variant minus reference):")
    for key, d in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]:
        if d:
            lines.append(f"  {d:+7g}  {_name(key)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Count the calls on SQLite, print the budget table and, with
    ``--top``, where ``uow``'s calls go on each path.
    """
    from . import __main__ as cli
    from .apps import create_tables

    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls")
    parser.add_argument("--top", type=int, default=0, help="functions to list")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/calls.db"
        create_tables(url)
        counts = count_alone(url)
    rows, failures = check("SQLite", counts)
    print("\n".join(cli.table(BUDGET_HEADERS, rows)))
    if args.top:
        for kind, variants in counts.items():
            ref, _ = reference(kind)
            print(f"\n{kind}: {CHECKED} against {ref}")
            print("\n".join(breakdown(variants[CHECKED], variants[ref], args.top)))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
