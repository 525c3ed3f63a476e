"""The real commands on a tiny study, end to end, as a user runs them: cuda_check.sh's commands section.

    python benchmarks/cuda_check_commands.py --data-root ROOT --device cuda --image-size 256 --batch-size 16 \\
        --work DIR --out commands.json [--pretrained]

On the synthetic category ``synth_object`` of ROOT (main.py synth), ResNet-50, each step a ``main.py`` process:

1. ``train`` of 2 runs (seeds 0 and 1) for 1 epoch with ``--amp bf16 --compile --keep-optimizer``; the data
   leaves a partial last batch. Recompilations and graph breaks are counted from dynamo's own log
   (``TORCH_LOGS=recompiles,graph_breaks``), whatever the backend (inductor on a GPU); each run compiles once.
   (``--no-compile``: eagerly, where inductor's toolchain is missing.)
2. resume: seed 0 to ``--resume-epochs`` (eager) continues from its epoch-1 checkpoint (with Adam's state:
   --keep-optimizer), leaves its first epoch unchanged, and trains the student the bf16 change is measured on.
3. ``test`` of both runs with the instruments (the scale ablation's scales.csv, regions.csv).
4. the bf16 metric change: ``test --eval-amp bf16 --force`` of seed 0 against its float32 metrics, stated with the
   run's epochs and final training and validation loss (a random teacher unless ``--pretrained``: no weights are
   downloaded).
5. ``predict`` with seed 0 on the category's test images: scores.csv and an overlay per image.

Every step's figures go to ``--out`` as it ends. Exit status: 0 when every command succeeded and every check held,
1 otherwise (the figures of every step that ran are written).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RD4AD-main"))

from atomic_files import atomic_write_text  # noqa: E402  (needs the path above)
from runs import (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, REGIONS_FILE, SCALES_FILE, RunKey,  # noqa: E402
                  run_dir)

MAIN = ROOT / "RD4AD-main" / "main.py"
CATEGORY, BACKBONE = "synth_object", "resnet50"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


class Study:
    """The study's folders, its command lines, and the figures written to ``out`` after every step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work)
        self.results, self.checkpoints = self.work / "results", self.work / "checkpoints"
        self.figures: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
                                        "steps": {}, "checks": []}

    def run_dir(self, seed: int) -> Path:
        return run_dir(self.results, RunKey(BACKBONE, CATEGORY, seed))

    def main_py(self, name: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
        """``main.py ARGV`` as a process; its output is kept in WORK/<name>.log. (exit status, output, seconds)"""
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(MAIN), *argv], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - started
        output = done.stdout + done.stderr
        (self.work / f"{name}.log").write_text(output)
        print(f"  {name}: exit status {done.returncode} after {seconds:.1f} s", flush=True)
        return done.returncode, output, seconds

    def train_flags(self, seeds: str, epochs: int) -> list[str]:
        a = self.args
        return ["train", "--data-root", a.data_root, "--categories", CATEGORY, "--backbones", BACKBONE,
                "--seeds", seeds, "--epochs", str(epochs), "--image-size", str(a.image_size),
                "--batch-size", str(a.batch_size),
                "--device", a.device, "--amp", "bf16", "--keep-optimizer", "--no-eta",
                "--results", str(self.results), "--checkpoints", str(self.checkpoints),
                *([] if a.pretrained else ["--no-pretrained"])]

    def check(self, what: str, met: bool, value: Any = None) -> bool:
        self.figures["checks"].append({"check": what, "met": bool(met), "value": value})
        print(f"  [{'ok' if met else 'FAILED'}] {what}" + ("" if value is None else f": {value}"), flush=True)
        return bool(met)

    def record(self, step: str, figures: dict[str, Any]) -> None:
        self.figures["steps"][step] = figures
        atomic_write_text(self.args.out, json.dumps(self.figures, indent=1) + "\n")


def read_history(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / HISTORY_FILE
    return list(csv.DictReader(path.open())) if path.is_file() else []


def count_lines(text: str, marker: str) -> int:
    return sum(marker in line for line in text.splitlines())


def graph_break_sites(text: str) -> list[str]:
    """The distinct places dynamo's log says it broke the graph at (file:line, the file's name only)."""
    sites = re.findall(r"Graph break .*?in user code at (\S+):(\d+)", text)
    return sorted({f"{Path(path).name}:{line}" for path, line in sites})


def train_step(study: Study) -> bool:
    """Two compiled bf16 runs; recompiles and graph breaks from dynamo's log; the partial last batch."""
    compiled = not study.args.no_compile
    code, output, seconds = study.main_py("train", *study.train_flags("0,1", 1), *(["--compile"] if compiled else []),
                                          env={"TORCH_LOGS": "recompiles,graph_breaks"})
    runs = {}
    for seed in (0, 1):
        config_file = study.run_dir(seed) / CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        history = read_history(study.run_dir(seed))
        runs[seed] = {"epochs": len(history), "fast_path": config.get("fast_path"), "n_train": config.get("n_train"),
                      "teacher_weights": config.get("teacher_weights"),
                      "epoch_time_s": [float(row["epoch_time_s"]) for row in history],
                      "loss": [float(row["loss"]) for row in history],
                      "val_loss": [float(row["val_loss"]) for row in history]}
    n_train = runs[0]["n_train"] or 0
    figures = {"exit_status": code, "seconds": seconds, "runs": runs,
               "recompiles": count_lines(output, "Recompiling function"),
               "graph_break_sites": graph_break_sites(output),
               "graph_break_note": "the step's zero_grad, backward and fused Adam run outside the compiled graphs "
                                   "(dynamo skips them by design); recompiles are what would cost time",
               "last_batch": n_train % study.args.batch_size,
               "note": "epoch_time_s of a run's first epoch includes its compilation (dynamo's caches are emptied "
                       "per run; inductor's on-disk cache is kept)"}
    study.record("train", figures)
    ok = study.check(f"train (2 runs, bf16{', --compile' if compiled else ''}) exits 0", code == 0, code)
    ok &= study.check(f"both runs trained 1 epoch in bf16{', compiled' if compiled else ' (--no-compile: eager)'}",
                      all(r["epochs"] == 1 and (r["fast_path"] or {}).get("compile") is compiled
                          and (r["fast_path"] or {}).get("autocast") == "bfloat16" for r in runs.values()))
    ok &= study.check("the epoch ends with a partial batch (of more than one image)", figures["last_batch"] > 1,
                      f"{n_train} training images, batch {study.args.batch_size}")
    ok &= study.check("no recompilation in either run (dynamo's log)", figures["recompiles"] == 0,
                      figures["recompiles"])
    return ok


def test_step(study: Study) -> bool:
    """``test`` of both runs with the instruments, then seed 0 again in bf16: the metric change at the stated loss."""
    code, _, seconds = study.main_py("test", "test", "--results", str(study.results), "--device", study.args.device)
    tested = {}
    for seed in (0, 1):
        run_dir = study.run_dir(seed)
        metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).is_file() else {}
        tested[seed] = {"metrics": {name: metrics.get(name) for name in METRICS},
                        "eval_precision": metrics.get("eval_precision"),
                        "instrument_files": sorted(p.name for p in run_dir.glob("*.csv"))}
    study.record("test", {"exit_status": code, "seconds": seconds, "runs": tested})
    ok = study.check("test (instruments on) exits 0", code == 0, code)
    ok &= study.check("metrics.json, scales.csv and regions.csv for both runs",
                      all(t["metrics"]["aupro"] is not None
                          and {SCALES_FILE, REGIONS_FILE} <= set(t["instrument_files"]) for t in tested.values()))

    code, _, seconds = study.main_py("test_bf16", "test", "--run-dir", str(study.run_dir(0)), "--eval-amp", "bf16",
                                     "--force", "--device", study.args.device)
    bf16_file = study.run_dir(0) / METRICS_FILE
    bf16 = json.loads(bf16_file.read_text()) if bf16_file.is_file() else {}
    float32 = tested[0]["metrics"]
    trained = read_history(study.run_dir(0))
    change = {name: None if bf16.get(name) is None or float32[name] is None else bf16[name] - float32[name]
              for name in METRICS}
    study.record("bf16_metric_change", {
        "exit_status": code, "seconds": seconds, "float32": float32,
        "bf16": {name: bf16.get(name) for name in METRICS}, "change": change,
        "stated_at": {"epochs": len(trained), "loss_by_epoch": [float(row["loss"]) for row in trained],
                      "final_loss": float(trained[-1]["loss"]) if trained else None,
                      "final_val_loss": float(trained[-1]["val_loss"]) if trained else None,
                      "teacher_weights": study.figures["steps"].get("train", {}).get("runs", {}).get(0, {}).get(
                          "teacher_weights"), "backbone": BACKBONE, "image_size": study.args.image_size},
        "note": "seed 0 of the tiny study (one synthetic category): the change is that of this model at this loss, "
                "not of a converged MVTec AD run"})
    ok &= study.check("test --eval-amp bf16 exits 0 and records bfloat16", code == 0
                      and bf16.get("eval_precision") == "bfloat16", bf16.get("eval_precision"))
    return ok


def resume_step(study: Study) -> bool:
    """Seed 0 from its epoch-1 checkpoint to --resume-epochs (eager): its first epoch stays as it was."""
    before = read_history(study.run_dir(0))
    epochs = study.args.resume_epochs
    code, output, seconds = study.main_py("resume", *study.train_flags("0", epochs))
    after = read_history(study.run_dir(0))
    study.record("resume", {"exit_status": code, "seconds": seconds, "epochs_before": len(before),
                            "epochs_after": len(after)})
    ok = study.check(f"train --epochs {epochs} resumes seed 0 after epoch 1",
                     code == 0 and "resuming after epoch 1" in output)
    ok &= study.check(f"{epochs} epochs, the first unchanged", len(after) == epochs and after[:1] == before[:1])
    return ok


def predict_step(study: Study) -> bool:
    images = Path(study.args.data_root) / CATEGORY / "test"
    count = sum(1 for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    out = study.work / "predictions"
    code, _, seconds = study.main_py("predict", "predict", "--run-dir", str(study.run_dir(0)), "--images", str(images),
                                     "--out", str(out), "--device", study.args.device)
    rows = list(csv.DictReader((out / "scores.csv").open())) if (out / "scores.csv").is_file() else []
    overlays = len(list((out / "overlays").glob("*.png")))
    study.record("predict", {"exit_status": code, "seconds": seconds, "images": count, "scores": len(rows),
                             "overlays": overlays})
    return study.check("predict scores every test image with an overlay each",
                       code == 0 and len(rows) == overlays == count > 0, f"{len(rows)} of {count}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help=f"a main.py synth root with {CATEGORY}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", required=True, help="folder of the study's runs, checkpoints and logs")
    parser.add_argument("--out", required=True, help="JSON file of the figures, written after every step")
    parser.add_argument("--pretrained", action="store_true", help="ImageNet teacher weights are in the hub cache")
    parser.add_argument("--resume-epochs", type=int, default=2,
                        help="epochs seed 0 is resumed to (at least 2): the student the bf16 change is measured on")
    parser.add_argument("--no-compile", action="store_true",
                        help="train without --compile (inductor's toolchain is missing: cuda_check.sh's preflight)")
    args = parser.parse_args()
    study = Study(args)
    study.work.mkdir(parents=True, exist_ok=True)
    ok = True
    if args.resume_epochs < 2:
        parser.error("--resume-epochs: expected at least 2 (the run trains 1 epoch first)")
    for step in (train_step, resume_step, test_step, predict_step):
        print(f"== commands: {step.__name__.removesuffix('_step')}", flush=True)
        ok &= step(study)
    study.record("summary", {"all_checks_met": ok, "failed": [c["check"] for c in study.figures["checks"]
                                                              if not c["met"]]})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
