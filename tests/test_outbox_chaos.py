"""The outbox under chaos (issue 22), bounded in time: three web workers make
units of work while they, the relay, Redis and the Celery worker are killed
and started again. Afterwards every committed unit's effect is applied
exactly once, no rolled-back unit's at all, and the outbox is drained.

The counts (units, kills, redeliveries, duplicates suppressed) are printed
for ``docs/reliability`` and attached to the test's report.
"""

from __future__ import annotations

import pathlib
import random
import subprocess
import sys
import time
import typing as t

import pytest

from .redis_server import RedisFactory
from .task_workers import Effects
from .task_workers import ROOT
from .task_workers import worker_env
from .task_workers import Workers
from .test_outbox import start_outbox_worker

pytestmark = pytest.mark.timeout(120)

#: How long the chaos lasts, and how long the system then has to settle.
CHAOS_SECONDS = 8.0
DRAIN_SECONDS = 30.0
WEB_WORKERS = 3
KEYS_PER_WORKER = 60


class Process:
    """A subprocess that can be SIGKILLed and started again."""

    def __init__(self, argv: list[str], env: dict[str, str], log: pathlib.Path):
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def done(self) -> bool:
        return self.proc is None or self.proc.poll() is not None


def test_chaos(
    db_url: str,
    make_redis: RedisFactory,
    task_workers: Workers,
    effects: Effects,
    tmp_path: pathlib.Path,
    record_property: t.Callable[[str, object], None],
) -> None:
    """Web workers, the relay, Redis and the Celery worker are killed at
    random under load; afterwards each committed unit's effect is applied
    exactly once and the outbox holds nothing unsent or dead.
    """
    rng = random.Random(22)
    server = make_redis(persistent=True)
    env = worker_env(db_url, server.url, UOW_TEST_BROKER="celery", UOW_TEST_GRACE="1")
    worker = start_outbox_worker(
        "celery", db_url, server, task_workers, pool="prefork", concurrency=2
    )
    relay = Process(
        [sys.executable, "-m", "flask", "--app", "tests.outbox_app"]
        + ["uow", "relay", "--interval", "0.1"],
        env,
        tmp_path / "relay.log",
    )
    relay.start()
    pending = [
        [f"w{w}k{k}" for k in range(KEYS_PER_WORKER)] for w in range(WEB_WORKERS)
    ]
    web: list[Process] = []
    for w, keys in enumerate(pending):
        web.append(
            Process(
                [sys.executable, "-m", "tests.outbox_app", "load", *keys],
                env,
                tmp_path / f"web{w}.log",
            )
        )
        web[-1].start()
    kills = {"web": 0, "relay": 0, "redis": 0, "celery": 0}
    deadline = time.monotonic() + CHAOS_SECONDS
    try:
        while time.monotonic() < deadline and not all(p.done() for p in web):
            time.sleep(rng.uniform(0.3, 0.8))
            victim = rng.choice(list(kills))
            if victim == "web":
                alive = [p for p in web if not p.done()]
                if alive:
                    rng.choice(alive).kill()
                    kills["web"] += 1
            elif victim == "relay":
                relay.kill()
                relay.start()
                kills["relay"] += 1
            elif victim == "redis":
                server.kill()
                time.sleep(0.3)
                server.start()
                kills["redis"] += 1
            else:
                worker.kill()
                worker.start()
                kills["celery"] += 1
        for p in web:
            if p.proc is not None:
                p.proc.wait(30)
        committed = effects.units()
        counts = effects.wait_for(committed, timeout=DRAIN_SECONDS, settle=2.0)
        unsent = effects.scalar("SELECT count(*) FROM uow_outbox WHERE sent_at IS NULL")
    finally:
        relay.kill()
    report = {
        "units": len(committed),
        **{f"kills_{name}": n for name, n in kills.items()},
        "duplicates_suppressed": worker.log().count("already processed"),
    }
    for name, value in report.items():
        record_property(name, value)
    print("chaos:", report)
    assert committed, "no unit committed: the load never ran"
    assert counts == dict.fromkeys(committed, 1)
    assert unsent == 0
    assert (
        effects.scalar("SELECT count(*) FROM uow_outbox WHERE dead_at IS NOT NULL") == 0
    )
    assert all(int(key.split("k")[1]) % 5 != 4 for key in committed)
