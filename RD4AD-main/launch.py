"""Sweep launcher: independent (backbone, category, seed) runs, one per device at a time, in subprocesses.

    python RD4AD-main/launch.py --devices cuda:0,cuda:1 -- --data-root data/mvtec --categories all \\
        --backbones resnet50,convnext_tiny --seeds 0,1,2

Everything after ``--`` is a ``main.py train`` command line and selects the sweep as it would there.
Each run becomes one ``main.py train`` process for that run alone, started on the next free device;
its output goes to a log file, and ``events.jsonl`` records when each run started and ended. Runs
whose checkpoint reached the final epoch are skipped without starting a process and incomplete ones
resume from their last checkpoint (train's own resume), so a killed launcher is restarted with the
same command. A CUDA device reaches its job as ``CUDA_VISIBLE_DEVICES``; CPU "devices" (tests, or
several jobs on a many-core machine) share the cores through ``OMP_NUM_THREADS``. On Linux the jobs
die with the launcher, however it is killed, so a restart never runs a job twice at once.

On a Slurm cluster, ``--slurm job.sh`` writes an sbatch job array instead (``--submit`` submits it):
one task per run that is not complete, each running the same resumable ``main.py train`` and then
``main.py test`` for its run, with ``--gpus``, ``--time``, ``--mem`` and ``--cpus-per-task`` requests
and a log per task.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runs  # noqa: E402  (needs the path above)
import sweep  # noqa: E402
from errors import RDError  # noqa: E402
from recipe import TrainConfig  # noqa: E402

__all__ = ["Job", "Launcher", "build_parser", "in_child_process", "job_command", "job_environment", "main",
           "parse_devices", "slurm_script", "write_slurm"]

MAIN = Path(__file__).resolve().parent / "main.py"
_T = TypeVar("_T")
POLL_S = 0.2


@dataclass
class Job:
    config: TrainConfig
    log: Path
    device: str = ""
    process: subprocess.Popen | None = None
    handle: IO | None = None
    started: float = 0.0


def parse_devices(text: str) -> list[str]:
    """``all`` (every visible GPU, else the CPU) or a comma list of ``cpu`` and ``cuda:N``."""
    import torch

    if text == "all":
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    devices = sweep.parse_list(text, "--devices")
    for device in devices:
        if device == "cpu":
            continue
        kind, _, index = device.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise RDError(f"--devices {text!r}: expected 'all' or a comma list of cpu and cuda:N")
        if int(index) >= torch.cuda.device_count():
            raise RDError(f"--devices: {device} is not visible here ({torch.cuda.device_count()} CUDA device(s))")
    if not devices:
        raise RDError("--devices: name at least one device")
    return devices


def job_command(train_args: list[str], config: TrainConfig, device: str) -> list[str]:
    """``main.py train`` for this run alone; later flags override the sweep's selection and device."""
    return [sys.executable, str(MAIN), "train", *train_args, "--backbones", config.backbone,
            "--categories", config.category, "--seeds", str(config.seed), "--method", config.method,
            "--device", "cpu" if device == "cpu" else "cuda", "--no-eta"]


def job_environment(device: str, cpu_slots: int) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cpu_slots)))
    else:
        index = int(device.split(":")[1])
        visible = env.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    return env


def in_child_process(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a fresh (spawned) process: the estimate may time training steps on a GPU, and a
    CUDA context created here would hold GPU memory for the whole sweep while the jobs need it."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the launcher dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class Launcher:
    """Runs jobs on device slots as they free up and records each start and end."""

    def __init__(self, devices: list[str], jobs_per_device: int, train_args: list[str], log_dir: Path) -> None:
        self.slots: list[Job | None] = [None] * (len(devices) * jobs_per_device)
        self.slot_devices = [device for device in devices for _ in range(jobs_per_device)]
        self.cpu_slots = self.slot_devices.count("cpu")
        self.train_args = train_args
        self.log_dir = log_dir
        self.failed: list[tuple[Job, int]] = []

    def event(self, kind: str, job: Job, **extra: object) -> None:
        record = {"event": kind, "run": str(job.config.key), "device": job.device, "time": time.time(), **extra}
        with open(self.log_dir / "events.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def start(self, slot: int, job: Job) -> None:
        job.device = self.slot_devices[slot]
        job.handle = open(job.log, "a", encoding="utf-8")
        job.handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.config.key} on {job.device}\n")
        job.handle.flush()
        job.started = time.time()
        job.process = subprocess.Popen(job_command(self.train_args, job.config, job.device), stdout=job.handle,
                                       stderr=subprocess.STDOUT, env=job_environment(job.device, self.cpu_slots),
                                       preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.slots[slot] = job
        self.event("start", job)
        print(f"{time.strftime('%H:%M:%S')} start {job.config.key} on {job.device} (log {job.log})", flush=True)

    def reap(self) -> None:
        for slot, job in enumerate(self.slots):
            if job is None or job.process.poll() is None:
                continue
            code = job.process.returncode
            job.handle.close()
            self.slots[slot] = None
            self.event("end", job, returncode=code)
            seconds = time.time() - job.started
            if code:
                self.failed.append((job, code))
            outcome = "done" if code == 0 else f"FAILED (exit {code}; see {job.log})"
            print(f"{time.strftime('%H:%M:%S')} {outcome} {job.config.key} on {job.device} in {seconds:.1f} s",
                  flush=True)

    def run(self, jobs: list[Job]) -> int:
        pending = deque(jobs)
        while pending or any(self.slots):
            for slot, job in enumerate(self.slots):
                if job is None and pending:
                    self.start(slot, pending.popleft())
            time.sleep(POLL_S)
            self.reap()
        for job, code in self.failed:
            print(f"failed: {job.config.key} (exit {code}), log {job.log}", file=sys.stderr)
        return 1 if self.failed else 0

    def stop(self) -> None:
        """Terminate the running jobs (their checkpoints are written atomically: they resume later)."""
        for job in self.slots:
            if job is not None and job.process.poll() is None:
                job.process.terminate()
        for job in self.slots:
            if job is not None:
                job.process.wait()


def slurm_script(configs: list[TrainConfig], train_args: list[str], args: argparse.Namespace) -> str:
    """An sbatch job array: task i trains and tests run i (resumable, like every train), logs per task."""
    def q(text: object) -> str:
        return shlex.quote(str(text))

    tasks = "\n".join(f"  {q(c.backbone)} {q(c.method)} {q(c.category)} {c.seed} {q(c.results)} {q(c.checkpoints)}"
                       for c in configs)
    throttle = f"%{args.max_parallel}" if args.max_parallel else ""
    directives = [f"--job-name={args.job_name}", f"--array=0-{len(configs) - 1}{throttle}",
                  f"--time={args.time}", f"--mem={args.mem}", f"--cpus-per-task={args.cpus_per_task}",
                  f"--output={Path(args.logs).resolve()}/%x_%A_%a.log"]
    if args.gpus:
        directives.append(f"--gpus-per-task={args.gpus}")
    if args.partition:
        directives.append(f"--partition={args.partition}")
    header = "\n".join(f"#SBATCH {d}" for d in directives)
    train = " ".join(q(a) for a in train_args)
    return f"""#!/usr/bin/env bash
# Written by `launch.py --slurm`: one array task per (backbone, method, category, seed); each trains its run
# (resuming from its last checkpoint: resubmit the same script after a failure) and then tests it.
{header}
set -euo pipefail
cd {q(Path.cwd())}
PYTHON=${{PYTHON:-{q(args.python)}}}
TASKS=(
{chr(10).join(f'  "{line.strip()}"' for line in tasks.splitlines())}
)
read -r BACKBONE METHOD CATEGORY SEED RESULTS CHECKPOINTS <<< "${{TASKS[${{SLURM_ARRAY_TASK_ID:?run me with sbatch}}]}}"
echo "task ${{SLURM_ARRAY_TASK_ID}}: $BACKBONE/$CATEGORY/seed$SEED ($METHOD) on $(hostname)"
"$PYTHON" {q(MAIN)} train {train} --backbones "$BACKBONE" --method "$METHOD" --categories "$CATEGORY" \\
    --seeds "$SEED" --results "$RESULTS" --checkpoints "$CHECKPOINTS" --no-eta
"$PYTHON" {q(MAIN)} test --results "$RESULTS" --checkpoints "$CHECKPOINTS" --backbones "$BACKBONE" \\
    --method "$METHOD" --categories "$CATEGORY" --seeds "$SEED"
"""


def write_slurm(configs: list[TrainConfig], train_args: list[str], args: argparse.Namespace) -> int:
    """Write the job array (and submit it with --submit); only runs that are not complete get a task."""
    todo = [c for c in configs if sweep.checkpoint_epoch(c.checkpoint_path) < c.epochs]
    if not todo:
        print(f"every one of the {len(configs)} run(s) is complete: nothing to submit")
        return 0
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    path = Path(args.slurm)
    runs.atomic_write_text(path, slurm_script(todo, train_args, args))
    path.chmod(path.stat().st_mode | 0o111)
    print(f"wrote {path}: {len(todo)} array task(s) of {len(configs)} run(s); logs in {args.logs}")
    if not args.submit:
        print(f"submit it with: sbatch {path}")
        return 0
    try:
        done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        raise RDError("--submit: sbatch is not on this machine's PATH (submit the script from a Slurm login node)") \
            from None
    if done.returncode:
        raise RDError(f"sbatch {path} failed (exit {done.returncode}): {done.stderr.strip()}")
    print(done.stdout.strip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.splitlines()[0],
                                     usage="%(prog)s [--devices D1,D2] [--jobs-per-device K] [--logs DIR] "
                                           "-- TRAIN_FLAGS")
    parser.add_argument("--devices", default="all", help="comma list of cuda:N and cpu, or 'all' (default: every "
                                                         "visible GPU, else the CPU)")
    parser.add_argument("--jobs-per-device", type=int, default=1, help="concurrent runs per device (default 1)")
    parser.add_argument("--logs", help="folder of per-run logs and events.jsonl (default <results>/launch_logs)")
    slurm = parser.add_argument_group("Slurm (a cluster instead of this node's devices)")
    slurm.add_argument("--slurm", metavar="SCRIPT", help="write an sbatch job array script here instead of running")
    slurm.add_argument("--submit", action="store_true", help="also submit it with sbatch")
    slurm.add_argument("--gpus", type=int, default=1, help="GPUs per task (0 for CPU-only tasks)")
    slurm.add_argument("--time", default="12:00:00", help="time limit per task (a 256 px, 200-epoch run)")
    slurm.add_argument("--mem", default="32G", help="memory per task")
    slurm.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--max-parallel", type=int, help="most tasks running at once (the array's %%N)")
    slurm.add_argument("--job-name", default="rd4ad", help="Slurm job name")
    slurm.add_argument("--python", default=sys.executable, help="the Python the tasks run (default: this one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    train_args = argv[split + 1:]
    try:
        if args.jobs_per_device < 1:
            raise RDError(f"--jobs-per-device {args.jobs_per_device}: expected at least 1")
        train_parser = argparse.ArgumentParser(prog="launch.py ... --")
        sweep.add_train_arguments(train_parser)
        train_options = train_parser.parse_args(train_args)
        configs = sweep.configs_from_args(train_options)
        if args.slurm:
            args.logs = args.logs or str(Path(configs[0].results) / "slurm_logs")
            return write_slurm(configs, train_args, args)
        devices = parse_devices(args.devices)
    except RDError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log_dir = Path(args.logs or Path(configs[0].results if configs else "results") / "launch_logs")
    log_dir.mkdir(parents=True, exist_ok=True)

    jobs = []
    for config in configs:
        done = sweep.checkpoint_epoch(config.checkpoint_path)
        if done >= config.epochs and not train_options.restart:
            print(f"{config.key}: complete ({done} epochs), skipped")
            continue
        jobs.append(Job(config, log_dir / f"{config.backbone}__{config.category}__seed{config.seed}.log"))
    print(f"{len(jobs)} run(s) to train of {len(configs)}, on {', '.join(devices)} "
          f"({args.jobs_per_device} job(s) per device); logs in {log_dir}", flush=True)
    if jobs and not train_options.no_eta:
        estimate = in_child_process(sweep.estimate_sweep, [job.config for job in jobs], train_options.bench_json)
        print(f"{estimate}\n  with {len(set(devices))} device(s) in parallel: about "
              f"{sweep.format_duration(estimate.total_s / min(len(set(devices)), len(jobs)))}", flush=True)

    launcher = Launcher(devices, args.jobs_per_device, train_args, log_dir)

    def on_signal(signum: int, _frame: object) -> None:
        launcher.stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return launcher.run(jobs)


if __name__ == "__main__":
    sys.exit(main())
