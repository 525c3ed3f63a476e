"""The tests that only mean something on a GPU (``pytest -m cuda``), run as cuda_check.sh's first measuring section,
with each test's outcome and seconds written to a JSON file (on a CPU they are all skipped).

    python benchmarks/cuda_tests.py --out tests.json [extra pytest arguments]

Exit status: pytest's (0 when nothing failed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RD4AD-main"))

from atomic_files import atomic_write_text  # noqa: E402  (needs the path above)


class Recorder:
    """A pytest plugin keeping each test's outcome and the seconds of its call."""

    def __init__(self) -> None:
        self.tests: list[dict] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.tests.append({"test": report.nodeid, "outcome": report.outcome, "seconds": round(report.duration, 3)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the outcomes")
    args, extra = parser.parse_known_args()
    recorder = Recorder()
    started = time.perf_counter()
    # the GPU tests live in tests/test_cuda.py: collecting only it saves importing the whole suite
    status = int(pytest.main(["-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
                              str(ROOT / "tests" / "test_cuda.py"), *extra], plugins=[recorder]))
    outcomes = [t["outcome"] for t in recorder.tests]
    payload = {"exit_status": status, "seconds": round(time.perf_counter() - started, 1),
               **{name: outcomes.count(name) for name in ("passed", "failed", "skipped")}, "tests": recorder.tests}
    atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
