"""The ledger's telemetry switch: LEDGER_TELEMETRY prints flask_uow's spans.

OpenTelemetry's global providers can be set once per process, so each mode
runs in a child process of its own.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from example_app import create_app

SCRIPT = """
import sys
from example_app import create_app
app = create_app(
    {"LEDGER_TELEMETRY": sys.argv[1], "UOW_ENGINES": {"default": sys.argv[2]}}
)
response = app.test_client().post("/accounts", json={"name": "alice", "balance": 5})
assert response.status_code == 201, response.get_data(as_text=True)
"""


def run(mode: str, tmp_path: pathlib.Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tree_prints_the_request_trace(tmp_path: pathlib.Path) -> None:
    """LEDGER_TELEMETRY=tree prints the request's span with the unit's span
    under it, its statements and its COMMIT under that.
    """
    out = run("tree", tmp_path)
    lines = out[out.index("POST /accounts") :].splitlines()
    assert lines[1].startswith("`-- flask_uow.unit")
    assert "outcome='commit'" in lines[1] and "statements=2" in lines[1]
    assert any(line.startswith("    |-- INSERT") for line in lines)
    assert any(line.startswith("    `-- flask_uow.commit") for line in lines)


def test_console_prints_spans_as_json(tmp_path: pathlib.Path) -> None:
    """LEDGER_TELEMETRY=console prints OpenTelemetry's JSON for each span."""
    out = run("console", tmp_path)
    decoder = json.JSONDecoder()
    names = []
    index = out.find("{")
    while index >= 0:
        item, end = decoder.raw_decode(out, index)
        if "context" in item:  # A span; metrics are printed too.
            names.append(item["name"])
        index = out.find("{", end)
    assert "flask_uow.unit" in names and "flask_uow.commit" in names
    assert "POST /accounts" in names


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="LEDGER_TELEMETRY must be one of"):
        create_app({"LEDGER_TELEMETRY": "loud"})
