"""Helpers shared by the tests (not fixtures: plain functions and tiny stand-in models)."""
from __future__ import annotations

import sys

import torch

import main

__all__ = ["TinyStudent", "TinyTeacher", "run_main"]


def run_main(*argv: str) -> int:
    """``main.py ARGV`` in this process; its exit status (argparse's SystemExit included), sys.argv restored."""
    saved = sys.argv[:]
    try:
        return main.main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        sys.argv = saved


class TinyTeacher(torch.nn.Module):
    """Three feature scales from a few convolutions: a stand-in teacher that traces in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, 4, 3, stride=2, padding=1) for c in (3, 4, 4))

    def forward(self, x):
        features = []
        for conv in self.convs:
            x = conv(x)
            features.append(x)
        return features


class TinyStudent(torch.nn.Module):
    """Bottleneck and student in one: a BatchNorm (running statistics guarded like the real student's) per scale."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))
                                         for _ in range(3))

    def forward(self, features):
        return [head(f) for head, f in zip(self.heads, features)]
