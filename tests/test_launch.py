"""Issue 6: the sweep launcher runs independent runs two at a time on two (fake, CPU) devices, and a
launcher killed mid-sweep, jobs and all, completes on restart and skips the runs already complete."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch
import sweep
from runs import RunKey, checkpoint_path

LAUNCH = Path(__file__).resolve().parents[1] / "RD4AD-main" / "launch.py"
KEYS = [RunKey("resnet50", category, seed) for category in ("synth_object", "synth_texture") for seed in (0, 1)]


def read_events(logs: Path) -> list[dict]:
    path = logs / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def max_running(events: list[dict]) -> int:
    """Most runs in progress at once, from start/end events (a run without an end runs to the last event)."""
    running, most = 0, 0
    for event in sorted(events, key=lambda e: (e["time"], e["event"] == "start")):
        running += 1 if event["event"] == "start" else -1
        most = max(most, running)
    return most


def test_launcher_runs_two_at_a_time_and_resumes_after_being_killed(synthetic_root, tmp_path):
    results, checkpoints, logs = tmp_path / "results", tmp_path / "checkpoints", tmp_path / "logs"
    command = [sys.executable, str(LAUNCH), "--devices", "cpu,cpu", "--logs", str(logs), "--",
               "--data-root", str(synthetic_root), "--backbones", "resnet50", "--categories",
               "synth_object,synth_texture", "--seeds", "0,1", "--epochs", "1", "--image-size", "64",
               "--batch-size", "8", "--no-pretrained", "--no-eta", "--results", str(results),
               "--checkpoints", str(checkpoints)]
    environment = dict(os.environ, OMP_NUM_THREADS="1")

    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=environment, start_new_session=True)
    deadline = time.time() + 300
    while not any(e["event"] == "end" for e in read_events(logs)):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and its running jobs, mid-sweep
    first.wait()
    killed = read_events(logs)
    assert [e["event"] for e in killed[:2]] == ["start", "start"]  # two jobs at once from the start
    finished = {e["run"] for e in killed if e["event"] == "end" and e["returncode"] == 0}
    assert finished and len(finished) < len(KEYS)

    second = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    skipped = {str(k) for k in KEYS if f"{k}: complete (1 epochs), skipped" in second.stdout}
    assert finished <= skipped and len(skipped) < len(KEYS)  # (a job may end between its last event and the kill)
    restarted = read_events(logs)[len(killed):]
    assert {e["run"] for e in restarted} == {str(k) for k in KEYS} - skipped  # no process for a complete run
    assert all(e["returncode"] == 0 for e in restarted if e["event"] == "end")
    assert max_running(restarted) == 2 and max_running(killed) == 2
    assert {e["device"] for e in restarted} == {"cpu"}
    for key in KEYS:
        assert sweep.checkpoint_epoch(checkpoint_path(checkpoints, key)) == 1, key
    assert "resnet50/synth_texture/seed1 on cpu" in (logs / "resnet50__synth_texture__seed1.log").read_text()


def test_devices_and_job_environment(monkeypatch):
    assert launch.parse_devices("cpu,cpu") == ["cpu", "cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert launch.job_environment("cuda:1", 0)["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch.job_environment("cpu", 2)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    for bad in ("gpu0", "cuda:x"):
        with pytest.raises(launch.RDError, match="cpu and cuda:N"):
            launch.parse_devices(bad)


def test_slurm_job_array_is_valid_bash_and_its_task_runs_locally(synthetic_root, tmp_path):
    script, logs = tmp_path / "job.sh", tmp_path / "logs"
    train = ["--data-root", str(synthetic_root), "--backbones", "resnet50", "--categories",
             "synth_object,synth_texture", "--seeds", "0", "--epochs", "1", "--image-size", "64", "--batch-size", "8",
             "--no-pretrained", "--device", "cpu", "--results", str(tmp_path / "results"),
             "--checkpoints", str(tmp_path / "checkpoints")]
    assert launch.main(["--slurm", str(script), "--logs", str(logs), "--gpus", "0", "--time", "00:30:00",
                        "--max-parallel", "4", "--", *train]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1%4" in text and "#SBATCH --time=00:30:00" in text and "--gpus-per-task" not in text
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script)], env=dict(os.environ, SLURM_ARRAY_TASK_ID="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "task 1: resnet50/synth_texture/seed0" in done.stdout
    run_dir = tmp_path / "results" / "resnet50" / "synth_texture" / "seed0"
    assert (run_dir / "metrics.json").is_file() and not (tmp_path / "results" / "resnet50" / "synth_object").exists()
    # the finished run gets no task when the script is written again
    assert launch.main(["--slurm", str(script), "--logs", str(logs), "--", *train]) == 0
    tasks = script.read_text().split("TASKS=(")[1].split("\n)\n")[0]
    assert "#SBATCH --array=0-0" in script.read_text() and "synth_object" in tasks and "synth_texture" not in tasks
