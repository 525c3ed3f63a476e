"""Timing harness of the benchmarks: alternating rounds of several code paths, peak memory, forward time.

Paths that are compared are run in alternation and each figure is the best round, so that a load spike
on a shared machine hits every path alike; ratios measured side by side in one run are what the
benchmarks report, never absolute times from separate runs.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from system_info import synchronize

__all__ = ["CAST_OP", "ForwardTimer", "Measure", "PeakMemory", "alternate", "batch_sizes", "count_ops", "resident_mb",
           "warm_up_batch_sizes"]

CAST_OP = "aten::_to_copy"  # every dtype (or device) conversion that copies goes through it, autocast's included


@dataclass
class Measure:
    """Seconds of each round of one path and its peak memory (MB) over them."""

    rounds: list[float]
    peak_mb: float
    work: int  # images (or steps) per round

    @property
    def best(self) -> float:
        return min(self.rounds)

    def as_dict(self) -> dict[str, Any]:
        return {"best_round_s": self.best, "rounds_s": self.rounds, "work_per_round": self.work,
                "peak_memory_mb": self.peak_mb}


def _current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), MB; 0 where unknown."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak memory inside a ``with`` block: max allocated on CUDA (its peak reset on entry), RSS sampled every
    2 ms on CPU; ``exclude_mb`` (e.g. another path's models, resident throughout) is subtracted."""

    def __init__(self, device: torch.device, exclude_mb: float = 0.0) -> None:
        self.device = device
        self.exclude_mb = exclude_mb
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mb = _current_rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, _current_rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _current_rss_mb())
        self.peak_mb -= self.exclude_mb


def resident_mb(holders: Iterable[object], device: torch.device) -> float:
    """MB of the tensors on ``device`` held by ``holders`` (tensors, modules with an RD model's teacher copies,
    optimisers' states), each storage once: the memory a path keeps resident while another one is measured."""
    storages: dict[int, int] = {}
    for holder in holders:
        if isinstance(holder, torch.Tensor):
            tensors = [holder]
        elif isinstance(holder, torch.optim.Optimizer):
            tensors = [t for state in holder.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        else:
            modules = [holder, *getattr(holder, "teacher_copies", lambda: [])()]
            tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        for tensor in tensors:
            if tensor.device.type == device.type and device.index in (None, tensor.device.index):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


def batch_sizes(n_images: int, batch_size: int) -> list[int]:
    """The batch sizes a pass over ``n_images`` in batches of ``batch_size`` meets: the full one and the last."""
    return sorted({min(batch_size, n_images), n_images % batch_size} - {0})


def warm_up_batch_sizes(run_batch: Callable[[int], object], n_images: int, batch_size: int) -> list[int]:
    """Call ``run_batch(size)`` once, untimed, for every batch size of such a pass, so that a timed pass meets
    no first call of a shape (cuDNN autotuning, first allocations); returns the sizes."""
    sizes = batch_sizes(n_images, batch_size)
    for size in sizes:
        run_batch(size)
    return sizes


def alternate(paths: dict[str, Callable[[], None]], rounds: int, warmup: int, work: int | dict[str, int],
              device: torch.device, desc: str, resident: dict[str, Callable[[], float]] | None = None
              ) -> dict[str, Measure]:
    """Run each path ``warmup`` times untimed, then ``rounds`` timed rounds, alternating the paths. A path's
    peak memory is measured around its own round (peak reset there) less ``resident[name]()``: the MB that the
    other paths keep on the device meanwhile (their models and optimiser states). ``work``: images (or steps) per
    round, one figure for every path or one per path (a slow reference path may do less per round)."""
    for _ in range(warmup):
        for run_once in paths.values():
            run_once()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks = dict.fromkeys(paths, 0.0)
    for _ in tqdm(range(rounds), desc=desc, unit="round", leave=False):
        for name, run_once in paths.items():
            with PeakMemory(device, (resident or {}).get(name, lambda: 0.0)()) as memory:
                started = time.perf_counter()
                run_once()
                synchronize(device)
                times[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], memory.peak_mb)
    per_path = work if isinstance(work, dict) else dict.fromkeys(paths, work)
    return {name: Measure(times[name], peaks[name], per_path[name]) for name in paths}


class ForwardTimer:
    """Total time spent in a module's forward calls (synchronised), to split off the network's share."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device, self.seconds = module, device, 0.0
        self._started = 0.0
        self._handles: list = []

    def __enter__(self) -> "ForwardTimer":
        def before(*_: object) -> None:
            synchronize(self.device)
            self._started = time.perf_counter()

        def after(*_: object) -> None:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self._started

        self._handles = [self.module.register_forward_pre_hook(before), self.module.register_forward_hook(after)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def count_ops(run_once: Callable[[], None], device: torch.device, repeats: int = 2) -> dict[str, float]:
    """Ops dispatched per call of ``run_once`` (torch.profiler, CPU side, after one untimed call): every
    ``aten::`` op the dispatcher ran, nested ones included, and the casts among them (``CAST_OP``). Each op
    costs host time to dispatch whatever its size: at small batches that, not the device, bounds a step."""
    run_once()
    synchronize(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(repeats):
            run_once()
        synchronize(device)
    names = [event.name for event in profile.events()]
    ops = sum(1 for name in names if name.startswith("aten::"))
    return {"ops_per_step": ops / repeats, "casts_per_step": names.count(CAST_OP) / repeats,
            "counted_steps": repeats}
