"""What a sweep writes to disk, how long writing it takes, and whether it fits: checkpoint sizes (from the model's
shapes on the meta device: nothing is allocated), a folder's measured write speed, and the free-space check ``train``
makes before it starts.

A run writes its checkpoint every ``--checkpoint-every`` epochs with Adam's two moments (3x the weights, so that a
killed run resumes exactly) and, at its last epoch, the weights alone (``--keep-optimizer`` keeps the moments).
Each save goes to a temporary file beside the previous checkpoint before replacing it, so the folder must hold one
more checkpoint than it keeps.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

import diskspace
from backbone_facts import DEFAULT_METHOD
from backbones import build_model
from checkpoint import checkpoint_bytes
from recipe import SELECT_SYNTHETIC_VAL, TrainConfig, open_split

__all__ = ["RESULTS_FIXED_BYTES", "WRITE_PROBE_BYTES", "CheckpointSizes", "check_free_space", "checkpoint_saves",
           "checkpoint_sizes", "measure_write_speed", "results_bytes"]

WRITE_PROBE_BYTES = 64 * 2**20  # written (and synced) once per checkpoints' file system to time the estimate's saves
RESULTS_FIXED_BYTES = 8 * 2**20  # config.json, history.csv and the run's lock, with room to spare


@dataclass(frozen=True)
class CheckpointSizes:
    """Bytes of one run's checkpoints: ``unfinished`` with Adam's moments, ``finished`` as the last epoch writes it."""

    unfinished: int
    finished: int


@lru_cache(maxsize=None)
def _sizes(backbone: str, method: str, knobs: str) -> tuple[int, int]:
    """(weights and moments, weights) checkpoint bytes of a model built on the meta device: every trainable part
    (RD++'s projection too), and for an unfinished RD++ checkpoint the gradients it may carry over (its optimiser
    steps every second batch)."""
    with torch.device("meta"):
        model = build_model(backbone, pretrained=False, method=method, **json.loads(knobs))
    weights = {name: part.state_dict() for name, part in model.trainable_modules().items()}
    parameters = list(model.trainable_modules().parameters())
    moments = {index: {"step": torch.zeros((), device="meta"), "exp_avg": p, "exp_avg_sq": p}
               for index, p in enumerate(parameters)}
    pending = {"pending_gradients": parameters} if method != DEFAULT_METHOD else {}
    return checkpoint_bytes({**weights, "optimizer": moments, **pending}), checkpoint_bytes(weights)


def checkpoint_sizes(config: TrainConfig) -> CheckpointSizes:
    """The sizes of ``config``'s checkpoints (the teacher is never stored: it is rebuilt from its weights or seed)."""
    with_moments, weights = _sizes(config.backbone, config.method, json.dumps(config.model_knobs, sort_keys=True))
    return CheckpointSizes(with_moments, with_moments if config.keep_optimizer else weights)


def checkpoint_saves(config: TrainConfig, epochs_done: int = 0) -> int:
    """Checkpoints with Adam's moments that the epochs after ``epochs_done`` write: every ``checkpoint_every``-th
    epoch before the last (which writes the finished checkpoint)."""
    return sum(1 for epoch in range(epochs_done + 1, config.epochs) if epoch % config.checkpoint_every == 0)


def results_bytes(config: TrainConfig, n_val: int | None = None) -> int:
    """What training writes under the results folder: its small files and the cached synthetic validation set
    (synthval.py: the validation normals and two anomalous copies of each, uint8 images and masks). ``n_val``: the
    validation normals when known (else counted from the run's split)."""
    if n_val is None:
        n_val = len(open_split(config, "val"))
    return RESULTS_FIXED_BYTES + 3 * n_val * 4 * config.image_size ** 2


def measure_write_speed(folder: str | os.PathLike, probe_bytes: int = WRITE_PROBE_BYTES) -> float:
    """Bytes per second written to ``folder`` (synced to the disk, as a sweep's gigabytes of checkpoints end up), by
    one probe file of ``probe_bytes`` (less where little space is free), removed afterwards."""
    target = diskspace.existing_folder(folder)
    size = max(2**20, min(probe_bytes, diskspace.free_bytes(target) // 4))
    block = os.urandom(min(size, 4 * 2**20))
    fd, probe = tempfile.mkstemp(dir=target, prefix=".write_speed.", suffix=".tmp")
    try:
        started = time.perf_counter()
        written = 0
        while written < size:
            written += os.write(fd, block[:size - written])
        os.fsync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)
    return written / max(seconds, 1e-6)


def check_free_space(configs: list[TrainConfig], epochs_done: Callable[[TrainConfig], int] = lambda _: 0,
                     skip: bool = False) -> list[str]:
    """Before a sweep starts: its checkpoint folder must have room for the largest checkpoint it will write (beside
    the previous one) and its results folder for the run's files; folders on one file system share its space.
    Raises ``diskspace.DiskFull`` when they cannot fit (``skip``: ``--skip-space-check``, a warning instead);
    returns the warnings, e.g. when the sweep's finished checkpoints will not all fit."""
    at_once: dict[int, dict[str, tuple[int, str]]] = {}  # file system -> kind -> (largest bytes needed at once, what)
    kept: dict[int, int] = {}  # file system -> bytes of the finished checkpoints at the end of the sweep
    where: dict[int, Path] = {}
    val_counts: dict[tuple, int] = {}  # one split listing per data set, hold-out and split (as preflight_runs)
    for config in configs:
        done = epochs_done(config)
        if done >= config.epochs:
            continue
        sizes = checkpoint_sizes(config)
        largest = sizes.unfinished if checkpoint_saves(config, done) or config.keep_optimizer else sizes.finished
        best = sizes.finished if config.selection == SELECT_SYNTHETIC_VAL else 0  # best.pth beside last.pth
        data_key = (config.data_root, config.category, config.data_format, config.split_csv, config.val_fraction,
                    config.split_seed)
        if data_key not in val_counts:
            val_counts[data_key] = len(open_split(config, "val"))
        for kind, folder, need in (("checkpoints", config.checkpoint_path.parent, largest),
                                   ("results", config.run_dir, results_bytes(config, val_counts[data_key]))):
            folder = diskspace.existing_folder(folder)
            device = diskspace.file_system(folder)
            where.setdefault(device, folder)
            previous = at_once.setdefault(device, {}).get(kind, (0, ""))
            if need > previous[0]:
                what = "largest checkpoint" if kind == "checkpoints" else "results files"
                at_once[device][kind] = (need, f"{config.key}'s {what} ({diskspace.format_bytes(need)}) in {folder}")
            if kind == "checkpoints":
                kept[device] = kept.get(device, 0) + sizes.finished + best
    warnings = []
    for device, items in at_once.items():
        need, free = sum(n for n, _ in items.values()), diskspace.free_bytes(where[device])
        if free < need:
            message = (f"not enough free space for this sweep: {'; '.join(w for _, w in items.values())}: "
                       f"{diskspace.format_bytes(need)} needed at once, {diskspace.format_bytes(free)} free there; "
                       f"the first such save would fail after its epochs of training. Free space or point "
                       f"--checkpoints/--results at another disk (--skip-space-check starts anyway)")
            if not skip:
                raise diskspace.DiskFull(message)
            warnings.append(f"warning: {message}")
        elif free < kept.get(device, 0):
            warnings.append(f"warning: the sweep's finished checkpoints will take "
                            f"{diskspace.format_bytes(kept[device])} on the disk of {where[device]}, where "
                            f"{diskspace.format_bytes(free)} are free: its last runs will not fit")
    return warnings
