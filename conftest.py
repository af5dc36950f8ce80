"""Loads the project's own pytest plugin for its test suites.

Installed, the plugin loads through its ``pytest11`` entry point; this
repository's configuration blocks that (``-p no:flask_uow`` in pyproject.toml)
and loads it here instead, after coverage measurement has started.
"""

pytest_plugins = [
    "flask_uow.pytest_plugin",
    "pytester",
    "tests.pgtwophase",
    "tests.redis_server",
    "tests.task_workers",
    "tests.pgbouncer",
    "tests.deploying",
    "tests.otel",
]
