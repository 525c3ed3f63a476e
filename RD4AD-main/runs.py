"""Where a run's files live, what they hold, and the one place that reads and writes them.

One run = one (backbone, category, seed). Its directory ``<results>/<backbone>/<category>/seed<k>/`` holds:

- ``config.json``   the full configuration of the run (every flag), the validation file names, the
                    teacher weights actually used (``teacher_weights``: e.g. ``"IMAGENET1K_V1"``,
                    ``"file:/path.pth"`` or ``"random"``), library versions and ``hardware``.
- ``history.csv``   one row per epoch: ``HISTORY_COLUMNS``.
- ``metrics.json``  written by ``main.py test``: ``image_auroc``, ``pixel_auroc`` / ``aupro`` (``null``
                    when the data has no masks), ``f1_max`` (test-tuned), ``threshold`` and
                    ``threshold_rule`` (from validation normals only), ``accuracy``, ``precision``,
                    ``recall``, ``f1`` at that threshold, ``per_defect_image_auroc``, counts, and
                    ``efficiency`` (``trainable_params``, ``gflops``, ``train_images_per_s``,
                    ``inference_ms_per_image``, ``peak_memory_mb``).
- ``scores.csv``    one row per test image: ``path, defect_type, label, score``.
- ``val_scores.csv`` one row per validation normal: ``path, score`` (the threshold's source).
- ``maps.npz``      optional: ``maps`` float16 (N, H, W), ``masks`` uint8 (N, H, W), ``paths``.

Checkpoints live apart, under ``<checkpoints>/<backbone>/<category>/seed<k>/last.pth`` (and ``best.pth``,
the epoch kept by ``--selection synthetic-val``; see synthval.py).
``<results>/summary.csv`` has one row per evaluated run. Every file is written atomically (a
temporary file in the same folder, then a rename), so a killed process never leaves half a file.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from categories import category_group
from errors import CheckpointError, RDError

__all__ = [
    "LOCK_FILE", "TEMPORARY_SUFFIX", "RunLock", "RunLocked", "remove_stale_temporaries", "strict_json",
    "BEST_CHECKPOINT_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "EFFICIENCY", "HISTORY_COLUMNS", "HISTORY_FILE",
    "MAPS_FILE", "METRICS", "METRICS_FILE", "SCORES_FILE", "SUMMARY_COLUMNS", "SUMMARY_FILE", "SYNTH_VAL_COLUMNS",
    "VAL_SCORES_FILE", "RunKey", "atomic_write", "atomic_write_json", "atomic_write_text", "best_checkpoint_path",
    "checkpoint_path", "find_runs", "key_of",
    "load_maps", "load_runs", "load_scores", "read_history", "read_json", "read_run_config", "run_dir",
    "save_maps", "steady_images_per_s", "untested_runs", "write_csv", "write_history", "write_summary",
]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
VAL_SCORES_FILE = "val_scores.csv"
MAPS_FILE = "maps.npz"
CHECKPOINT_FILE = "last.pth"
BEST_CHECKPOINT_FILE = "best.pth"
SUMMARY_FILE = "summary.csv"
LOCK_FILE = ".lock"
TEMPORARY_SUFFIX = ".tmp"

# the synthetic-validation scores (synthval.py): filled every --val-every epochs and at the last, empty otherwise
SYNTH_VAL_COLUMNS = ("synth_image_auroc", "synth_pixel_auroc", "synth_aupro")
HISTORY_COLUMNS = ("epoch", "loss", "loss_scale1", "loss_scale2", "loss_scale3", "val_loss",
                   "epoch_time_s", "images_per_s", "peak_memory_mb", *SYNTH_VAL_COLUMNS)
# metrics.json key -> label; all are fractions in [0, 1], shown in percent.
METRICS: dict[str, str] = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "f1_max": "F1-max (test-tuned)",
    "accuracy": "accuracy @val-thr",
    "precision": "precision @val-thr",
    "recall": "recall @val-thr",
    "f1": "F1 @val-thr",
}
# metrics.json["efficiency"] key -> (label, scale, decimals)
EFFICIENCY: dict[str, tuple[str, float, int]] = {
    "trainable_params": ("trainable params (M)", 1e-6, 2),
    "gflops": ("GFLOPs", 1.0, 1),
    "train_images_per_s": ("training images/s", 1.0, 1),
    "inference_ms_per_image": ("inference ms/image", 1.0, 1),
    "peak_memory_mb": ("peak memory (MB)", 1.0, 0),
}
SUMMARY_COLUMNS = ("backbone", "category", "seed", "image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy",
                   "precision", "recall", "f1", "threshold", "trainable_params", "gflops", "train_images_per_s",
                   "inference_ms_per_image", "peak_memory_mb", "teacher_weights", "epochs", "image_size")
RUN_FIRST = "run `main.py train` and `main.py test` first"


@dataclass(frozen=True)
class RunKey:
    """Identity of one run."""

    backbone: str
    category: str
    seed: int

    @property
    def relative(self) -> Path:
        return Path(self.backbone) / self.category / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.backbone}/{self.category}/seed{self.seed}"


def run_dir(results: str | os.PathLike, key: RunKey) -> Path:
    return Path(results) / key.relative


def checkpoint_path(checkpoints: str | os.PathLike, key: RunKey) -> Path:
    return Path(checkpoints) / key.relative / CHECKPOINT_FILE


def best_checkpoint_path(checkpoints: str | os.PathLike, key: RunKey) -> Path:
    """The weights of the epoch ``--selection synthetic-val`` keeps, beside last.pth."""
    return Path(checkpoints) / key.relative / BEST_CHECKPOINT_FILE


def find_runs(results: str | os.PathLike, require: str = METRICS_FILE) -> list[Path]:
    """Run directories under ``results`` that hold ``require`` (default: evaluated runs), sorted."""
    return sorted(path.parent for path in Path(results).glob(f"*/*/seed*/{require}"))


def key_of(directory: str | os.PathLike) -> RunKey:
    """The RunKey of a run directory, read from its config.json."""
    config = read_json(Path(directory) / CONFIG_FILE)
    return RunKey(config["backbone"], config["category"], int(config["seed"]))


# ---------------------------------------------------------------------------------------------- writing

def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open`` would give it (0644 under umask 022; ``mkstemp``'s own
    0600 would hide results from colleagues on a shared server). The temporary file is removed when
    ``write`` fails or the process is interrupted; one left by a SIGKILL is removed by
    ``remove_stale_temporaries`` when its run starts again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when a process was killed mid-write.

    Call it only while holding the folder's run lock: another writer's temporary file is not stale.
    """
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunLocked(RDError):
    """Another process holds the lock of a run folder."""


class RunLock:
    """An exclusive OS file lock (``flock`` on ``<folder>/.lock``) held while a process works on a run.

    Released on any exit, a crash or SIGKILL included (the kernel drops it with the process). A second
    process stops at once with a message naming the holder's PID and command line.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise RunLocked(f"{self.folder} is in use by {holder}; wait for it to finish or stop it, or use "
                            f"another --results/--checkpoints folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({' '.join(sys.argv) or 'python'})\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def strict_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None and ``<key>_note`` saying what it was, so
    that strict JSON readers (jq, browsers, other languages) accept the file; readers take None for it."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                out.setdefault(f"{key}_note", f"{value} (not representable in JSON): written as null")
                value = None
            out[key] = strict_json(value)
        return out
    if isinstance(data, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in data]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (no NaN or Infinity: see ``strict_json``), indented, keys sorted, atomically."""
    atomic_write_text(path, json.dumps(strict_json(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV file with a header line, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file this project (or its user) wrote; a damaged one is an RDError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RDError(f"{path}: not valid JSON ({error}); the file is damaged or was not written by main.py: "
                      f"restore it or rerun the command that writes it") from None


# ---------------------------------------------------------------------------------------------- config.json

def read_run_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A run directory's config.json, or an error saying what a run directory is."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a run directory: it has no {CONFIG_FILE} "
                              f"(run directories are written by `main.py train` under results/BACKBONE/CATEGORY/seedK)")
    return read_json(path)


# ---------------------------------------------------------------------------------------------- history.csv

def _format_number(value: float | None) -> str:
    if value is None:  # not measured this epoch (e.g. the synthetic validation between --val-every epochs)
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def write_history(path: str | os.PathLike, history: list[dict[str, float]]) -> None:
    """history.csv: one row per epoch, ``HISTORY_COLUMNS`` (6 significant digits; empty when not measured)."""
    lines = [",".join(HISTORY_COLUMNS)]
    # rows of a run resumed from before the synthetic validation existed lack its columns
    lines += [",".join(_format_number(row.get(c) if c in SYNTH_VAL_COLUMNS else row[c]) for c in HISTORY_COLUMNS)
              for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_history(directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's history.csv as a DataFrame, or None when the run has none yet."""
    path = Path(directory) / HISTORY_FILE
    return pd.read_csv(path) if path.is_file() else None


def steady_images_per_s(directory: str | os.PathLike) -> float | None:
    """Mean training images/s of a run's history without its first epoch (warm-up), when there are others."""
    history = read_history(directory)
    if history is None or history.empty:
        return None
    speeds = history["images_per_s"].astype(float).tolist()
    steady = speeds[1:] or speeds
    return sum(steady) / len(steady)


# ---------------------------------------------------------------------------------------------- scores and maps

@lru_cache(maxsize=256)
def _read_scores(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"path": str, "defect_type": str, "label": int, "score": float})


def load_scores(directory: str | os.PathLike) -> pd.DataFrame:
    """A run's scores.csv (path, defect_type, label, score), sorted by path."""
    path = Path(directory) / SCORES_FILE
    if not path.is_file():
        raise RDError(f"{path} is missing: run `main.py test` for this run")
    return _read_scores(str(path), path.stat().st_mtime_ns).sort_values("path", ignore_index=True)


def save_maps(path: str | os.PathLike, maps: np.ndarray, masks: np.ndarray, paths: list[str]) -> None:
    """maps.npz: float16 maps, uint8 masks and the image paths, compressed, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, maps=maps.astype(np.float16), masks=masks.astype(np.uint8),
                                paths=np.asarray(paths))

    atomic_write(path, write)


@lru_cache(maxsize=64)
def _read_maps(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def load_maps(directory: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """A run's maps.npz (maps, masks, paths), or None when the run saved no maps."""
    path = Path(directory) / MAPS_FILE
    if not path.is_file():
        return None
    return _read_maps(str(path), path.stat().st_mtime_ns)


# ---------------------------------------------------------------------------------------------- all runs

def _number(value: Any) -> float:
    """A metric as float; ``null`` (not measured) becomes NaN."""
    return float("nan") if value is None else float(value)


def _text(config: dict, name: str) -> str:
    """A config value as text; ``unknown`` when the run did not record it."""
    value = config.get(name)
    return "unknown" if value is None else str(value)


def format_hardware(hardware: Any) -> str:
    """config["hardware"] as one short string (a dict becomes sorted ``key=value`` pairs)."""
    if isinstance(hardware, dict):
        return ", ".join(f"{key}={value}" for key, value in sorted(hardware.items()) if value is not None)
    return "unknown" if hardware is None else str(hardware)


def _run_row(directory: Path) -> dict[str, Any]:
    """One run as a flat row: identity, provenance from config.json, numbers from metrics.json."""
    config = read_json(directory / CONFIG_FILE)
    metrics = read_json(directory / METRICS_FILE)
    efficiency = metrics.get("efficiency") or {}
    category = str(config["category"])
    return {
        "backbone": str(config["backbone"]),
        "category": category,
        "seed": int(config["seed"]),
        "kind": category_group(category),
        "run_dir": str(directory),
        "data_root": _text(config, "data_root"),
        "image_size": _text(config, "image_size"),
        "epochs": _text(config, "epochs"),
        "teacher_weights": _text(config, "teacher_weights"),
        "hardware": format_hardware(config.get("hardware")),
        "threshold": _number(metrics.get("threshold")),
        "threshold_rule": str(metrics.get("threshold_rule") or "unknown"),
        **{key: _number(metrics.get(key)) for key in METRICS},
        **{key: _number(efficiency.get(key)) for key in EFFICIENCY},
    }


def load_runs(results: str | os.PathLike) -> pd.DataFrame:
    """Every evaluated run under ``results``: one row per run, sorted by category, backbone, seed."""
    results = Path(results)
    if not results.is_dir():
        raise RDError(f"results directory {results} does not exist: {RUN_FIRST}")
    directories = find_runs(results)
    if not directories:
        raise RDError(f"no evaluated runs (<backbone>/<category>/seed<k>/metrics.json) under {results}: {RUN_FIRST}")
    frame = pd.DataFrame([_run_row(directory) for directory in directories])
    return frame.sort_values(["category", "backbone", "seed"], ignore_index=True)


def untested_runs(results: str | os.PathLike) -> list[str]:
    """Run directories with a config.json but no metrics.json: trained, not yet tested."""
    evaluated = set(find_runs(results))
    return [str(path) for path in find_runs(results, require=CONFIG_FILE) if path not in evaluated]


def write_summary(results: str | os.PathLike) -> Path:
    """Gather one row per evaluated run into ``results/summary.csv``."""
    rows = []
    for directory in find_runs(results):
        metrics = read_json(directory / METRICS_FILE)
        flat = metrics | metrics.get("efficiency", {})
        rows.append({c: flat.get(c) for c in SUMMARY_COLUMNS})
    path = Path(results) / SUMMARY_FILE
    atomic_write_text(path, pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(index=False))
    return path
