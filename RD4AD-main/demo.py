"""``main.py demo`` (``make demo``): synthetic data -> train the fair pair -> test -> analyse -> comparison report.

Runs anywhere in minutes: two synthetic MVTec-format categories at 64 px, ResNet-50 and ConvNeXt-Tiny
RD trained briefly with the shared recipe, evaluated, their teachers analysed (``main.py analyse``), and
compared in ``reports/demo/``. Synthetic validation runs every ``DEMO_VAL_EVERY`` epochs with the selection
audit on (``--audit-test``), so that the report's Why section has every instrument; the model is still the
last epoch's (the selection rule and the metrics are those of a plain run). It asks for
the pretrained ImageNet teachers; when they cannot be loaded (no network, no cached file) it says so
loudly and continues with random teachers, and the report carries the same warning. Only the demo
does that: ``main.py train`` fails instead.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import report
from cli import add_deprecated_alias
from errors import WeightsError
from backbones import FAIR_PAIR, check_teacher_weights
from evaluate import evaluate_run
from runs import write_summary
from analyse import AnalyseSettings, analyse
from train import train_run
from weights import each_download_once
from workflow import generate_demo_data, sweep_configs

__all__ = ["DEMO_VAL_EVERY", "add_arguments", "run", "run_demo"]

DEMO_VAL_EVERY = 2  # synthetic validation (and the audit) every 2 epochs: 4 points per run at 8 epochs


def _unavailable_teachers(backbones: tuple[str, ...]) -> list[str]:
    """The backbones whose ImageNet teacher weights cannot be loaded here (no network, no cached file)."""
    missing = []
    for name in backbones:
        try:
            check_teacher_weights(name)
        except WeightsError:
            missing.append(name)
    return missing


def run_demo(data: Path, results: Path, checkpoints: Path, out: Path, epochs: int, seeds: str,
             image_size: int, device: str, portfolio: str | None) -> Path:
    """Every step of the demo; returns the path of report.md. Each missing weights file is tried once (the
    preflight's try), not again by every run."""
    with each_download_once():
        return _run_demo(data, results, checkpoints, out, epochs, seeds, image_size, device, portfolio)


def _run_demo(data: Path, results: Path, checkpoints: Path, out: Path, epochs: int, seeds: str,
              image_size: int, device: str, portfolio: str | None) -> Path:
    started = time.perf_counter()
    categories = generate_demo_data(data, image_size)
    configs = [config for backbone in FAIR_PAIR
               for config in sweep_configs(str(data), backbone, ",".join(categories), seeds,
                                           image_size=image_size, epochs=epochs, batch_size=16,
                                           fallback_random_teacher=True, checkpoint_every=epochs, device=device,
                                           results=str(results), checkpoints=str(checkpoints),
                                           val_every=DEMO_VAL_EVERY, audit_test=True)]
    print(f"demo: {len(configs)} runs ({', '.join(FAIR_PAIR)} x {', '.join(categories)} x seeds {seeds}), "
          f"{epochs} epochs at {image_size} px")
    unavailable = _unavailable_teachers(FAIR_PAIR)
    if unavailable:
        print(f"\n{'!' * 100}\nWARNING: PRETRAINED TEACHER WEIGHTS UNAVAILABLE for {', '.join(unavailable)}: "
              f"their runs ({sum(c.backbone in unavailable for c in configs)} of {len(configs)}) train on RANDOM "
              f"teachers, which says nothing about RD with ImageNet features; the report says so too.\n"
              f"{'!' * 100}\n", flush=True)
    for number, config in enumerate(configs, 1):
        print(f"[{number}/{len(configs)}] {config.key}")
        evaluate_run(train_run(config, announce_fallback=False), device=device, save_maps=True)
    write_summary(results)
    analyse(AnalyseSettings(results=str(results), backbones=",".join(FAIR_PAIR), categories=",".join(categories),
                            device=device))
    comparison = report.build_report(results, pairs=[FAIR_PAIR])
    path = report.write_report(comparison, out, portfolio=portfolio)
    warning = report.teacher_warning(comparison.runs)
    if warning:
        print("\n" + "!" * 100 + "\n" + warning.replace("**", "") + "\n" + "!" * 100)
    print(f"demo done in {time.perf_counter() - started:.0f} s: {path}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default="data/demo", help="where the synthetic data set is written")
    add_deprecated_alias(parser, "--data", "--data-root", "data_root")
    parser.add_argument("--results", default="results/demo")
    parser.add_argument("--checkpoints", default="checkpoints/demo")
    parser.add_argument("--out", default="reports/demo", help="report folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds (default 0,1)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--portfolio", help="also rewrite this document's generated block "
                                            "(RD4AD-main/RD_Model_Comparison_Portfolio.md)")


def run(args: argparse.Namespace) -> int:
    run_demo(Path(args.data_root), Path(args.results), Path(args.checkpoints), Path(args.out), args.epochs,
             args.seeds, args.image_size, args.device, args.portfolio)
    return 0
