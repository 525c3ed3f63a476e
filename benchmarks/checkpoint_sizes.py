"""Size on disk of a finished run's checkpoint per backbone (what a sweep stores), as a markdown table.

    .venv/bin/python benchmarks/checkpoint_sizes.py [--backbones all]

A finished checkpoint holds the bottleneck and student weights and the run's metadata: no teacher (it
is rebuilt from its weights and checked by SHA-256) and no optimiser state (unfinished checkpoints keep
Adam's, about 3x larger, so that a killed run resumes exactly). Random weights: the size does not
depend on them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import torch  # noqa: E402

from backbones import build_model, parse_backbones  # noqa: E402
from capacity import count_parameters  # noqa: E402
from checkpoint import save_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="all")
    args = parser.parse_args()
    print("| backbone | trainable parameters | finished checkpoint (MB) |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in parse_backbones(args.backbones):
            torch.manual_seed(0)
            model = build_model(name, pretrained=False)
            path = Path(folder) / f"{name}.pth"
            save_checkpoint(path, model, backbone=name, image_size=256, teacher_weights="random", teacher_seed=0,
                            training_state={"epoch": 200, "history": []})
            print(f"| {name} | {count_parameters(model.trainable_modules()):,} | {path.stat().st_size / 1e6:.1f} |")
    print(f"\n_Written by `benchmarks/checkpoint_sizes.py` (torch {torch.__version__})._")
    return 0


if __name__ == "__main__":
    sys.exit(main())
