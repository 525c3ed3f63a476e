"""Issue 15: the launcher estimates the sweep in a child process, so that its own process never creates a
CUDA context (timing steps on a GPU would otherwise hold GPU memory for the whole sweep)."""
from __future__ import annotations

import os

import pytest

import launch
from errors import RDError


def _fail(message: str) -> None:
    raise RDError(message)


def test_estimate_runs_in_another_process_and_its_errors_come_back():
    assert launch.in_child_process(os.getpid) != os.getpid()
    with pytest.raises(RDError, match="no bench.json here"):
        launch.in_child_process(_fail, "no bench.json here")


def test_the_launcher_estimates_through_the_child(monkeypatch, tmp_path, synthetic_root, capsys):
    def stub_estimate(configs, bench):
        return launch.sweep.SweepEstimate(60.0, len(configs), 0, 100, ["  (stub)"])

    calls = []
    monkeypatch.setattr(launch, "in_child_process", lambda function, *args: calls.append(function) or function(*args))
    monkeypatch.setattr(launch.sweep, "estimate_sweep", stub_estimate)
    monkeypatch.setattr(launch.Launcher, "run", lambda self, jobs: 0)
    assert launch.main(["--devices", "cpu", "--", "--data-root", str(synthetic_root), "--categories", "synth_object",
                        "--backbones", "resnet50", "--results", str(tmp_path)]) == 0
    assert calls == [stub_estimate] and "sweep estimate" in capsys.readouterr().out
