"""A pytest plugin for running Flask-SQLAlchemy's own test suite against
another package, loaded with ``-p flask_sqlalchemy_alias`` in the subprocess
that :mod:`tests.flask_sqlalchemy_suite` starts.

When loaded, before any test module is collected, it makes ``flask_sqlalchemy``
and each of its submodules resolve to the package named by the environment
variable ``FSA_SUITE_TARGET`` and its submodules (``flask_uow.compat`` by
default; ``flask_sqlalchemy`` itself leaves the real package in place). It
writes the outcome of every test to the JSON file named by
``FSA_SUITE_RESULTS``, so the parent process reads results, not output.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import typing as t

import pytest

#: Flask-SQLAlchemy 3.1's public submodules.
SUBMODULES = (
    "cli",
    "extension",
    "model",
    "pagination",
    "query",
    "record_queries",
    "session",
    "track_modifications",
)

TARGET = os.environ.get("FSA_SUITE_TARGET", "flask_uow.compat")

if TARGET != "flask_sqlalchemy":
    sys.modules["flask_sqlalchemy"] = importlib.import_module(TARGET)
    for _name in SUBMODULES:
        sys.modules[f"flask_sqlalchemy.{_name}"] = importlib.import_module(
            f"{TARGET}.{_name}"
        )

#: Each test's outcome by node id: "passed", "failed" or "skipped", and the
#: first line of the error of each test that did not pass.
_outcomes: dict[str, str] = {}
_errors: dict[str, str] = {}


def _first_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0]
    return str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the worst outcome of a test's setup, call and teardown."""
    if report.failed:
        if _outcomes.get(report.nodeid) != "failed":
            _errors[report.nodeid] = f"{report.when}: {_first_line(report)}"
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and _outcomes.get(report.nodeid) != "failed":
        _outcomes[report.nodeid] = "skipped"
        _errors[report.nodeid] = _first_line(report)
    elif report.when == "call" and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "passed"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that cannot be collected hides its tests: report it."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"
        _errors[report.nodeid] = f"collect: {_first_line(report)}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("FSA_SUITE_RESULTS")
    if path:
        data: dict[str, t.Any] = {"outcomes": _outcomes, "errors": _errors}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
