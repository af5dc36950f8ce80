"""Memory: many requests through flask_uow must not grow the process."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import tracemalloc

from .apps import BUILDERS
from .apps import create_tables
from .requests import request_runner

#: The mix of requests: reads, writes, and one that uses no database.
MIX = [("GET", "/nodb"), ("GET", "/one/500"), ("GET", "/twenty"), ("POST", "/insert")]


@dataclasses.dataclass
class MemoryResult:
    backend: str
    requests: int
    warmup: int
    growth_bytes: int

    @property
    def growth_mb(self) -> float:
        return self.growth_bytes / 2**20


def run(
    backend: str,
    url: str,
    requests: int,
    warmup: int,
    variant: str = "uow-transactional",
) -> MemoryResult:
    """Send *requests* requests (after *warmup* more) through a flask_uow
    variant (by default with an after_commit receiver and @uow.transactional
    views), and measure how much traced memory grew between the end of the
    warm-up and the end.
    """
    create_tables(url)
    app, dispose = BUILDERS[variant](url)
    try:
        calls = itertools.cycle([request_runner(app, m, p) for m, p in MIX])
        for _ in range(warmup):
            next(calls)()
        gc.collect()
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            for _ in range(requests):
                next(calls)()
            gc.collect()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return MemoryResult(backend, requests, warmup, end - start)
    finally:
        dispose()
