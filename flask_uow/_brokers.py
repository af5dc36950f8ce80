"""The broker adapters of the outbox: how a task is named when it is
enqueued, how a row is published, and how a captured task runs in a test.

Neither Celery nor RQ is imported here: an adapter holds the user's own
Celery app or Redis connection, and RQ is imported only when an
:class:`RQBroker` is made.
"""

from __future__ import annotations

import collections.abc as cabc
import importlib
import typing as t


class Broker:
    """What the outbox asks of a task queue. Use :class:`CeleryBroker` or
    :class:`RQBroker`.

    .. versionadded:: 0.1
    """

    def describe(self, task: t.Any) -> tuple[str, str | None]:
        """The name a task is stored under and its queue (``None``: the
        broker routes it).

        :raise TypeError: *task* cannot be published by this broker.
        """
        raise NotImplementedError

    def publish(
        self,
        key: str,
        name: str,
        queue: str | None,
        args: list[t.Any],
        kwargs: dict[str, t.Any],
    ) -> None:
        """Hand one task to the broker, with *key* as its id."""
        raise NotImplementedError

    def run(
        self, key: str, name: str, args: list[t.Any], kwargs: dict[str, t.Any]
    ) -> object:
        """Run one task in this process, as a worker would, with *key* as its
        id (captured tasks in tests).
        """
        raise NotImplementedError


class CeleryBroker(Broker):
    """Publish outbox rows with a Celery app: ``send_task`` by the task's
    name, with the row's key as the task id. Celery's own routing
    (``task_routes``, a task's ``queue``) chooses the queue.

    :param celery: The app's ``Celery`` instance.

    .. versionadded:: 0.1
    """

    #: How many times a publish reconnects to the broker before it fails
    #: (a connection left over from before a broker restart is stale).
    RETRY_POLICY: t.ClassVar[dict[str, float]] = {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.1,
        "interval_max": 0.1,
    }

    def __init__(self, celery: t.Any) -> None:
        if not callable(getattr(celery, "send_task", None)):
            raise TypeError(
                f"'CeleryBroker' needs a Celery app, not {type(celery).__name__!r}."
                " Pass the app's 'Celery(...)' instance."
            )
        self.celery = celery

    def describe(self, task: t.Any) -> tuple[str, str | None]:
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str) or not (
            isinstance(task, str) or callable(getattr(task, "apply_async", None))
        ):
            raise TypeError(
                f"'enqueue' with a CeleryBroker needs a Celery task (a function"
                f" decorated with @celery.task) or a task name, not {task!r}."
            )
        return name, None

    def publish(
        self,
        key: str,
        name: str,
        queue: str | None,
        args: list[t.Any],
        kwargs: dict[str, t.Any],
    ) -> None:
        options: dict[str, t.Any] = {"queue": queue} if queue else {}
        self.celery.send_task(
            name,
            args=args,
            kwargs=kwargs,
            task_id=key,
            retry=True,
            retry_policy=self.RETRY_POLICY,
            **options,
        )

    def run(
        self, key: str, name: str, args: list[t.Any], kwargs: dict[str, t.Any]
    ) -> object:
        task = self.celery.tasks[name]
        return task.apply(args=args, kwargs=kwargs, task_id=key, throw=True).get()


class RQBroker(Broker):
    """Publish outbox rows as RQ jobs, with the row's key as the job id.

    RQ has no routing of its own: a job goes to *queue*, or to the queue
    *routes* names for its function.

    :param connection: A ``redis.Redis`` connection to RQ's Redis.
    :param queue: The name of the queue jobs go to by default.
    :param routes: The queue of some job functions, by dotted name
        (``{"myapp.tasks.resize": "images"}``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        connection: t.Any,
        queue: str = "default",
        routes: cabc.Mapping[str, str] | None = None,
    ) -> None:
        if not callable(getattr(connection, "lpush", None)):
            raise TypeError(
                f"'RQBroker' needs a redis.Redis connection, not"
                f" {type(connection).__name__!r}. For example"
                " RQBroker(Redis.from_url('redis://127.0.0.1:6379/0'))."
            )
        if not isinstance(queue, str) or not queue:
            raise TypeError(f"'RQBroker' needs a queue name, not {queue!r}.")
        import rq

        self.rq = rq
        self.connection = connection
        self.queue = queue
        self.routes = dict(routes or {})

    def describe(self, task: t.Any) -> tuple[str, str | None]:
        if isinstance(task, str):
            name = task
        else:
            module = getattr(task, "__module__", None)
            qualname = getattr(task, "__qualname__", None)
            if not callable(task) or not module or not qualname or "<" in qualname:
                raise TypeError(
                    f"'enqueue' with an RQBroker needs a function an RQ worker can"
                    f" import by its dotted name, not {task!r}. Define the job"
                    " function at the top level of a module."
                )
            if module == "__main__":
                raise TypeError(
                    f"'enqueue' with an RQBroker cannot use {qualname!r} from"
                    " '__main__': an RQ worker would import its own '__main__'."
                    " Import the job function from its module instead."
                )
            name = f"{module}.{qualname}"
        return name, self.routes.get(name, self.queue)

    def publish(
        self,
        key: str,
        name: str,
        queue: str | None,
        args: list[t.Any],
        kwargs: dict[str, t.Any],
    ) -> None:
        target = self.rq.Queue(queue or self.queue, connection=self.connection)
        target.enqueue_call(func=name, args=args, kwargs=kwargs, job_id=key)

    def run(
        self, key: str, name: str, args: list[t.Any], kwargs: dict[str, t.Any]
    ) -> object:
        module, _, attribute = name.rpartition(".")
        function = getattr(importlib.import_module(module), attribute)
        return function(*args, **kwargs)
