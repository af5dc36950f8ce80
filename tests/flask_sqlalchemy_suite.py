"""Run Flask-SQLAlchemy 3.1.1's own test suite against ``flask_uow.compat``
(or, for comparison, against the real Flask-SQLAlchemy), without copying it
into this repository.

The sdist is downloaded once with pip into a cache folder outside the
repository (``$XDG_CACHE_HOME/flask_uow``, else ``~/.cache/flask_uow``) and
checked against its known hash; its ``tests/`` folder is extracted into a
temporary folder for each run, and pytest runs it in a subprocess with the
:mod:`tests.flask_sqlalchemy_alias` plugin.

As a script, it prints the outcome of a run, for measuring a baseline::

    python -m tests.flask_sqlalchemy_suite --target flask_sqlalchemy
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

VERSION = "3.1.1"
SDIST = f"flask_sqlalchemy-{VERSION}.tar.gz"
#: The SHA-256 of the sdist on PyPI.
SDIST_SHA256 = "e4b68bb881802dda1a7d878b2fc84c06d1ee57fb40b874d3dc97dabfa36b8312"
#: The number of tests the suite has (its parametrizations included).
TOTAL = 452

HERE = pathlib.Path(__file__).parent


class SdistUnavailable(Exception):
    """The sdist is neither cached nor downloadable."""


def cache_dir() -> pathlib.Path:
    """The folder the sdist is kept in between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "flask_uow"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def obtain_sdist() -> pathlib.Path:
    """The path of the cached sdist, downloaded with pip if it is missing or
    does not match its hash.

    :raise SdistUnavailable: pip could not download it.
    """
    folder = cache_dir()
    path = folder / SDIST
    if path.exists() and _sha256(path) == SDIST_SHA256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"flask-sqlalchemy=={VERSION}",
        "-d",
        str(folder),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not path.exists():
        raise SdistUnavailable(
            f"'pip download' of Flask-SQLAlchemy {VERSION}'s sdist failed"
            f" (exit status {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    if _sha256(path) != SDIST_SHA256:
        path.unlink()
        raise SdistUnavailable(
            f"The downloaded {SDIST} does not have the expected SHA-256"
            f" {SDIST_SHA256}; it was deleted."
        )
    return path


def extract_tests(sdist: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Extract the sdist's ``tests/`` folder into *dest* and return it. The
    folder keeps its name: a test checks that recorded query locations
    start with ``tests/``.
    """
    prefix = f"flask_sqlalchemy-{VERSION}/tests/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        for member in members:
            if not member.isfile():
                continue
            target = dest / "tests" / member.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is not None:
                target.write_bytes(source.read())
    return dest / "tests"


@dataclasses.dataclass
class Outcome:
    """The result of one run of the suite."""

    #: "passed", "failed" or "skipped", by test node id (without "tests/").
    outcomes: dict[str, str]
    #: The first line of the error of each test that did not pass.
    errors: dict[str, str]
    #: pytest's output, for the message of a failed comparison.
    output: str

    def with_outcome(self, outcome: str) -> set[str]:
        return {name for name, value in self.outcomes.items() if value == outcome}


def run_suite(
    sdist: pathlib.Path, target: str = "flask_uow.compat", timeout: float = 600
) -> Outcome:
    """Run the suite of *sdist* in a subprocess, with ``flask_sqlalchemy``
    aliased to *target*.
    """
    with tempfile.TemporaryDirectory(prefix="flask_uow_fsa_") as name:
        folder = pathlib.Path(name)
        tests = extract_tests(sdist, folder)
        ini = folder / "pytest.ini"
        ini.write_text("[pytest]\nfilterwarnings =\n    error\n", encoding="utf-8")
        results = folder / "results.json"
        env = dict(os.environ)
        path = [str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        env["FSA_SUITE_TARGET"] = target
        env["FSA_SUITE_RESULTS"] = str(results)
        env.pop("PYTEST_ADDOPTS", None)
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(tests),
            "-c",
            str(ini),
            "--rootdir",
            str(folder),
            "-q",
            "-p",
            "no:cacheprovider",
            # pytest-flask pushes a context for tests with an 'app' fixture,
            # which the suite's own fixtures do not expect.
            "-p",
            "no:flask",
            "-p",
            "no:flask_uow",
            "-p",
            "no:randomly",
            "-p",
            "no:cov",
            "-p",
            "no:xdist",
            "-p",
            "flask_sqlalchemy_alias",
        ]
        done = subprocess.run(
            command,
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = done.stdout + done.stderr
        if not results.exists():
            raise RuntimeError(
                f"The Flask-SQLAlchemy suite did not run (exit status"
                f" {done.returncode}):\n{output[-3000:]}"
            )
        data = json.loads(results.read_text(encoding="utf-8"))
    strip = "tests/"

    def short(nodeid: str) -> str:
        return nodeid[len(strip) :] if nodeid.startswith(strip) else nodeid

    return Outcome(
        {short(k): v for k, v in data["outcomes"].items()},
        {short(k): v for k, v in data["errors"].items()},
        output,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="flask_uow.compat")
    args = parser.parse_args()
    outcome = run_suite(obtain_sdist(), args.target)
    counts = collections.Counter(outcome.outcomes.values())
    print(f"{args.target}: {dict(counts)} of {len(outcome.outcomes)}")
    reasons = collections.Counter(outcome.errors.values())
    for reason, n in reasons.most_common():
        print(f"{n:4d}  {reason[:160]}")
    for name in sorted(outcome.with_outcome("failed")):
        print(f"FAILED {name}")


if __name__ == "__main__":
    main()
