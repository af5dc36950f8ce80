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
import re
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
CHAOS_SECONDS = 6.0
DRAIN_SECONDS = 30.0
WEB_WORKERS = 3
KEYS_PER_WORKER = 40


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


def supervise(worker: t.Any, relay: Process) -> int:
    """What a process supervisor does: start the Celery worker and the relay
    again if they exited (a Celery worker can exit when Redis is killed under
    it); how many it started.
    """
    started = 0
    if not worker.running:
        worker.start()
        started += 1
    if relay.done():
        relay.start()
        started += 1
    return started


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
    env = worker_env(
        db_url,
        server.url,
        UOW_TEST_BROKER="celery",
        UOW_TEST_GRACE="0.3",
        # A task the broker loses after taking it (a Celery worker or Redis
        # killed between its pop and its bookkeeping) is published again.
        UOW_TEST_REDELIVER="4",
    )
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
    restarts = 0
    kills = {"web": 0, "relay": 0, "redis": 0, "celery": 0}
    deadline = time.monotonic() + CHAOS_SECONDS
    try:
        while time.monotonic() < deadline and not all(p.done() for p in web):
            time.sleep(rng.uniform(0.3, 0.8))
            restarts += supervise(worker, relay)
            victim = rng.choice(list(kills))
            if victim == "web":
                alive = [p for p in web if not p.done()]
                if alive:
                    # Killed mid-request, and started again by its supervisor:
                    # it repeats its keys, and the ones that committed fail.
                    victim_process = rng.choice(alive)
                    victim_process.kill()
                    victim_process.start()
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
        restarts += supervise(worker, relay)
        committed = effects.units()
        counts = effects.wait_for(committed, timeout=DRAIN_SECONDS, settle=2.0)
        unsent = effects.scalar("SELECT count(*) FROM uow_outbox WHERE sent_at IS NULL")
    finally:
        relay.kill()
    received = re.findall(r"record_once\[([0-9a-f-]+)\] received", worker.log())
    report = {
        "units": len(committed),
        **{f"kills_{name}": n for name, n in kills.items()},
        "restarts_after_crash": restarts,
        "deliveries": len(received),
        "redeliveries": len(received) - len(set(received)),
        # Counted from the worker's own handler (Celery logs each line again).
        "duplicates_suppressed": len(
            re.findall(r"^INFO flask_uow: .*already processed", worker.log(), re.M)
        ),
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
