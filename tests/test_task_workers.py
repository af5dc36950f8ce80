"""The test infrastructure for background tasks works for real: Redis from
Debian's ``redis-server``, and Celery and RQ workers as subprocesses, run a
task sent with ``.delay()`` or ``Queue.enqueue()`` and its effect is in the
database as a separate connection sees it; a worker killed with SIGKILL in
the middle of a task is started again and takes new tasks; Redis stopped and
started again on the same port is reachable again.
"""

from __future__ import annotations

import collections.abc as cabc
import time

import pytest
import redis
from celery import Celery
from rq import Queue

from .outbox_tasks import apply_effect
from .outbox_tasks import make_celery
from .outbox_tasks import slow_effect
from .redis_server import RedisFactory
from .redis_server import RedisServer
from .task_workers import Effects
from .task_workers import Workers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def celery_sender(redis_server: RedisServer) -> cabc.Iterator[Celery]:
    """A Celery app in the test process that sends to the test's Redis."""
    app = make_celery(redis_server.url)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def rq_queue(redis_server: RedisServer) -> cabc.Iterator[Queue]:
    """The RQ queue ``default`` on the test's Redis."""
    connection = redis.Redis.from_url(redis_server.url)
    try:
        yield Queue("default", connection=connection)
    finally:
        connection.close()


def test_celery_worker_runs_a_delayed_task(
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    celery_sender: Celery,
    effects: Effects,
) -> None:
    """A task sent with ``.delay()`` runs once in a real Celery worker."""
    task_workers.celery(db_url, redis_server)
    celery_sender.tasks["tests.outbox_tasks.apply_effect"].delay("celery-1")
    assert effects.wait_for(["celery-1"], settle=0.3) == {"celery-1": 1}


def test_rq_worker_runs_an_enqueued_job(
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    rq_queue: Queue,
    effects: Effects,
) -> None:
    """A job enqueued with ``Queue.enqueue()`` runs once in a real RQ worker."""
    task_workers.rq(db_url, redis_server)
    rq_queue.enqueue(apply_effect, "rq-1")
    assert effects.wait_for(["rq-1"], settle=0.3) == {"rq-1": 1}


def test_killed_worker_restarts_and_takes_new_tasks(
    db_url: str,
    redis_server: RedisServer,
    task_workers: Workers,
    rq_queue: Queue,
    effects: Effects,
) -> None:
    """A worker SIGKILLed in the middle of a task never finishes it; started
    again, it runs the next task.
    """
    worker = task_workers.rq(db_url, redis_server)
    rq_queue.enqueue(slow_effect, "slow", 30)
    assert effects.wait_for(["slow:started"]) == {"slow:started": 1}
    worker.kill()
    assert worker.kills == 1 and not worker.running
    worker.start()
    rq_queue.enqueue(apply_effect, "after")
    counts = effects.wait_for(["after"], settle=0.3)
    assert counts == {"slow:started": 1, "after": 1}


def test_redis_restarts_on_the_same_port(make_redis: RedisFactory) -> None:
    """Stopped, Redis refuses connections; started again on the same port,
    a persistent server still has what it was told before.
    """
    server = make_redis(persistent=True)
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        client.set("kept", "yes")
        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        port = server.port
        server.start()
        assert server.port == port
        assert client.get("kept") == b"yes"
        server.kill()
        server.start()
        assert client.get("kept") == b"yes"
    finally:
        client.close()


def test_non_persistent_redis_forgets_on_restart(redis_server: RedisServer) -> None:
    """The default server keeps nothing on disk: a restart empties it."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        client.set("gone", "soon")
        started = time.monotonic()
        redis_server.restart()
        assert time.monotonic() - started < 5
        assert client.get("gone") is None
    finally:
        client.close()
