"""Issues 19 and 24: ``benchmarks/cuda_check.sh`` prints its plan (under 8 minutes on one GPU), runs its sections in
order, exits non-zero when a section fails while still indexing every finished one, skips the compile section (and
trains eagerly) when inductor's toolchain is missing, and starts each invocation from an empty output folder.

The sections' commands (``main.py``, ``benchmarks/*.py``) are replaced by a stand-in interpreter (``$PYTHON``): it
runs the real Python for the preflight and the index, and for a script writes its ``--out`` figures file and exits 0,
or exits 3 when one of its arguments is FAIL_ON_ARG. The whole script runs, in seconds; the real dry run
(``bash benchmarks/cuda_check.sh --device cpu``) runs every section for real, in minutes.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["preflight", "tests", "data", "bench", "fp32", "compile", "commands"]

STAND_IN = r"""#!/usr/bin/env bash
case "${1:-}" in
  *.py)
    for arg in "$@"; do [ -n "${FAIL_ON_ARG:-}" ] && [ "$arg" = "$FAIL_ON_ARG" ] && exit 3; done
    all="$*"
    while [ $# -gt 0 ]; do [ "$1" = --out ] && echo "{\"stand_in\": true, \"args\": \"$all\"}" > "$2"; shift; done
    exit 0 ;;
esac
exec "%s" "$@"
"""


def run_check(tmp_path: Path, out: Path | None = None, **env: str) -> tuple[int, dict, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    python = tmp_path / "python"
    python.write_text(STAND_IN % sys.executable)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    out = out or tmp_path / "out"
    full_env = {**os.environ, "PYTHON": str(python), "OUT": str(out), **env}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "cuda_check.sh"), "--device", "cpu"], env=full_env,
                            capture_output=True, text=True, timeout=180)
    index = json.loads((out / "cuda_check.json").read_text())
    assert (out / "cuda_check.log").read_text() == result.stdout  # the log is what was shown
    return result.returncode, index["sections"], result.stdout


def test_every_section_passing_exits_0_after_its_plan(tmp_path):
    status, sections, log = run_check(tmp_path)
    assert status == 0, log
    assert list(sections) == SECTIONS  # in this order
    assert all(s["exit_status"] == 0 for s in sections.values())
    assert all(sections[name]["figures"]["stand_in"] for name in SECTIONS if name not in ("preflight", "data"))
    assert "--compile" in sections["compile"]["figures"]["args"]
    assert "--no-compile" not in sections["commands"]["figures"]["args"]
    preflight = sections["preflight"]["figures"]
    assert preflight["compile_toolchain_missing"] == [] and set(preflight["imagenet_weights_present"]) == {
        "resnet50", "wide_resnet50_2", "convnext_tiny"}
    assert "compile toolchain of inductor on cpu (backend eager): not needed" in log  # the dry run's default
    assert "ImageNet teacher weights in the hub cache" in log
    # the plan: every section with its budget on one H100, adding up to under 8 minutes
    budgets = {m.group(1): int(m.group(2)) for m in re.finditer(r"^  (\w+) +(\d+) ", log, re.MULTILINE)}
    assert list(budgets) == SECTIONS
    total = int(re.search(r"^plan total: (\d+) s on one H100", log, re.MULTILINE).group(1))
    assert total == sum(budgets.values()) < 8 * 60
    assert log.index("plan total") < log.index("section tests") < log.index("section data") < log.index(
        "section bench") < log.index("section commands")


@pytest.mark.parametrize("failing, flag", [("fp32", "--no-tf32"), ("commands", "benchmarks/cuda_check_commands.py")])
def test_a_failed_section_exits_non_zero_and_the_others_are_still_indexed(tmp_path, failing, flag):
    """The fp32 section alone passes --no-tf32. The output folder of an earlier invocation is emptied first: its
    sections never mix into this run's index."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".cuda_check_output").touch()
    (out / "cuda_check.json").write_text(json.dumps({"device": "cuda", "sections": {"old": {"exit_status": 0}}}))
    (out / "bench_old.json").write_text("{}")
    status, sections, log = run_check(tmp_path, out, FAIL_ON_ARG=flag)
    assert status == 1, log
    assert sections[failing]["exit_status"] == 3 and "figures" not in sections[failing]
    assert all(s["exit_status"] == 0 for name, s in sections.items() if name != failing)
    assert list(sections) == SECTIONS and not (out / "bench_old.json").exists()
    assert f"FAILED: {failing} (exit status 3)" in log


def test_compile_section_skipped_without_a_compiler_for_inductor(tmp_path):
    """The commands section then trains without --compile (the stand-in takes the flag)."""
    status, sections, log = run_check(tmp_path, CXX=str(tmp_path / "no-such-c++"), RD_COMPILE_BACKEND="inductor")
    assert status == 0, log
    assert sections["compile"]["note"] == "skipped: inductor's toolchain is missing" and "figures" not in sections[
        "compile"]
    assert f"inductor on cpu (backend inductor): missing the C++ compiler CXX={tmp_path / 'no-such-c++'}" in log
    assert "compile section skipped" in log and "the commands section trains eagerly" in log
    assert "--no-compile" in sections["commands"]["figures"]["args"]
    # (dynamo's eager backend, the dry run's default, needs no compiler: test_compile.py)


def test_a_foreign_output_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("not cuda_check's")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "cuda_check.sh"), "--device", "cpu"],
                            env={**os.environ, "OUT": str(out)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not empty and was not written by cuda_check.sh" in result.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
