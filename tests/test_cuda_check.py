"""Issue 19: ``benchmarks/cuda_check.sh`` exits non-zero when a section fails, still indexing every finished
section, and skips the compile section with a clear line when inductor's C toolchain is missing.

The sections' ``main.py bench`` runs are replaced by a stand-in interpreter (``$PYTHON``): it runs the real
Python for the preflight and the index, and for ``main.py bench`` writes a figures file and exits 0, or exits
3 for the section named in FAIL_ON_ARG. The whole script runs, in seconds.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/usr/bin/env bash
if [ "${1:-}" = RD4AD-main/main.py ]; then
  for arg in "$@"; do [ -n "${FAIL_ON_ARG:-}" ] && [ "$arg" = "$FAIL_ON_ARG" ] && exit 3; done
  while [ $# -gt 0 ]; do [ "$1" = --out ] && echo '{"stand_in": true}' > "$2"; shift; done
  exit 0
fi
exec "%s" "$@"
"""


def run_check(tmp_path: Path, **env: str) -> tuple[int, dict, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    python = tmp_path / "python"
    python.write_text(STAND_IN % sys.executable)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    full_env = {**os.environ, "PYTHON": str(python), "OUT": str(out), **env}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "cuda_check.sh"), "--device", "cpu"], env=full_env,
                            capture_output=True, text=True, timeout=120)
    index = json.loads((out / "cuda_check.json").read_text())
    assert (out / "cuda_check.log").read_text() == result.stdout  # the log is what was shown
    return result.returncode, index["sections"], result.stdout


def test_every_section_passing_exits_0(tmp_path):
    status, sections, log = run_check(tmp_path)
    assert status == 0, log
    assert {name: s["exit_status"] for name, s in sections.items()} == {"bench": 0, "fp32": 0, "compile": 0}
    assert all(s["figures"] == {"stand_in": True} for s in sections.values())
    assert "compile toolchain (C compiler, Python.h): found" in log


@pytest.mark.parametrize("failing, flag", [("fp32", "--no-tf32"), ("bench", "resnet50,wide_resnet50_2,convnext_tiny")])
def test_a_failed_section_exits_non_zero_and_the_others_are_still_indexed(tmp_path, failing, flag):
    """The fp32 section alone passes --no-tf32; the bench section alone names three backbones."""
    status, sections, log = run_check(tmp_path, FAIL_ON_ARG=flag)
    assert status == 1, log
    assert sections[failing]["exit_status"] == 3 and "figures" not in sections[failing]
    assert all(s["exit_status"] == 0 and s["figures"] for name, s in sections.items() if name != failing)
    assert set(sections) == {"bench", "fp32", "compile"}
    assert f"FAILED: {failing} (exit status 3)" in log


def test_compile_section_skipped_without_a_c_compiler_for_inductor(tmp_path):
    status, sections, log = run_check(tmp_path, CC=str(tmp_path / "no-such-cc"), RD_COMPILE_BACKEND="inductor")
    assert status == 0, log
    assert set(sections) == {"bench", "fp32"}
    assert f"compile section skipped: inductor needs a C compiler and Python.h: no C compiler (CC={tmp_path}" in log
    # the eager backend needs no compiler: the section runs, with a note
    status, sections, log = run_check(tmp_path / "eager", CC=str(tmp_path / "no-such-cc"), RD_COMPILE_BACKEND="eager")
    assert status == 0 and "compile" in sections and "not needed by the eager backend" in log
