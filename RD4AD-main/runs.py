"""Where a run's files live, what they hold, and the one place that reads and writes them.

One run = one (backbone, category, seed) of one method. Its directory ``<results>/<arm>/<category>/seed<k>/`` (the
arm label, backbone_facts.arm_label: ``resnet50`` for RD4AD, ``resnet50+rdpp`` for RD++) holds:

- ``config.json``   the full configuration of the run (every flag), the validation file names, the
                    teacher weights actually used (``teacher_weights``: e.g. ``"IMAGENET1K_V1"``,
                    ``"file:/path.pth"`` or ``"random"``), library versions and ``hardware``.
- ``history.csv``   one row per epoch: ``HISTORY_COLUMNS`` (RD++ runs: then ``RDPP_LOSS_COLUMNS``).
- ``metrics.json``  written by ``main.py test``: ``image_auroc``, ``pixel_auroc`` / ``aupro`` (``null``
                    when the data has no masks), ``f1_max`` (test-tuned), ``threshold`` and
                    ``threshold_rule`` (from validation normals only), ``accuracy``, ``precision``,
                    ``recall``, ``f1`` at that threshold, ``per_defect_image_auroc``, counts, and
                    ``efficiency`` (``trainable_params``, ``gflops``, ``train_images_per_s``,
                    ``inference_ms_per_image``, ``peak_memory_mb``); with masks also ``aupro_5pct`` (AUPRO to
                    FPR 0.05), ``aupimo`` (mean per-image AUPIMO, ``aupimo_fpr_band``, ``n_aupimo_images``),
                    ``seg_f1`` (pixel F1 at the threshold) and ``seg_f1_max`` (test-tuned), each ``null``
                    with a ``_note`` where not measured.
- ``aupimo.csv``    with masks, one row per anomalous test image: ``AUPIMO_COLUMNS`` (``nan`` where not computed).
- ``scores.csv``    one row per test image: ``path, defect_type, label, score``.
- ``val_scores.csv`` one row per validation normal: ``path, score`` (the threshold's source).
- ``maps.npz``      optional: ``maps`` float16 (N, H, W), ``masks`` uint8 (N, H, W), ``paths``.
- ``scales.csv``    the scale ablation (instruments.py): ``SCALES_COLUMNS``, one row per map (all scales, each
                    scale alone, each scale left out); skipped with ``test --no-scale-ablation``.
- ``regions.csv``   one row per ground-truth region of the test masks (instruments.py): ``REGIONS_COLUMNS``.

Checkpoints live apart, under ``<checkpoints>/<arm>/<category>/seed<k>/last.pth`` (and ``best.pth``,
the epoch kept by ``--selection synthetic-val``; see synthval.py).
``<results>/summary.csv`` has one row per evaluated run. Every file is written atomically (a
temporary file in the same folder, then a rename), so a killed process never leaves half a file.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from atomic_files import (LOCK_FILE, TEMPORARY_SUFFIX, RunLock, RunLocked, atomic_write, atomic_write_json,
                          atomic_write_text, read_json, remove_stale_temporaries, strict_json, write_csv)
from backbone_facts import DEFAULT_METHOD, RDPP_LOSS_TERMS, arm_label
from categories import category_group
from errors import CheckpointError, RDError
from protocol import recorded_settings

__all__ = [
    "LOCK_FILE", "TEMPORARY_SUFFIX", "RunLock", "RunLocked", "remove_stale_temporaries", "strict_json",
    "BEST_CHECKPOINT_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "EFFICIENCY", "HISTORY_COLUMNS", "HISTORY_FILE",
    "AUPIMO_COLUMNS", "AUPIMO_FILE", "GRAD_NORM_COLUMNS", "MAPS_FILE", "METRICS", "METRICS_FILE", "RDPP_LOSS_COLUMNS",
    "REGIONS_COLUMNS", "REGIONS_FILE", "SCALES_COLUMNS", "SCALES_FILE", "SCORES_FILE", "SUMMARY_COLUMNS",
    "SUMMARY_FILE", "SYNTH_VAL_COLUMNS", "TESTED_ONLY",
    "VAL_SCORES_FILE", "RunKey", "atomic_write", "atomic_write_json", "atomic_write_text", "best_checkpoint_path",
    "checkpoint_path", "find_runs", "key_of",
    "load_aupimo", "load_maps", "load_regions", "load_runs", "load_scales", "load_scores", "read_history", "read_json",
    "read_run_config", "run_dir",
    "SYNTH_SATURATION", "synthetic_saturation_note",
    "save_maps", "steady_images_per_s", "untested_runs", "write_aupimo", "write_csv", "write_history",
    "write_summary",
]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
VAL_SCORES_FILE = "val_scores.csv"
MAPS_FILE = "maps.npz"
SCALES_FILE = "scales.csv"
REGIONS_FILE = "regions.csv"
AUPIMO_FILE = "aupimo.csv"
CHECKPOINT_FILE = "last.pth"
BEST_CHECKPOINT_FILE = "best.pth"
SUMMARY_FILE = "summary.csv"

# the synthetic-validation scores (synthval.py): filled every --val-every epochs and at the last, empty otherwise
SYNTH_VAL_COLUMNS = ("synth_image_auroc", "synth_pixel_auroc", "synth_aupro")
# the mean over the epoch's steps of the L2 norm of all the part's parameter gradients (empty in older runs)
GRAD_NORM_COLUMNS = ("grad_norm_bottleneck", "grad_norm_student")
SYNTH_SATURATION = 0.99  # synthetic AUPRO above which the synthetic validation set counts as saturated
HISTORY_COLUMNS = ("epoch", "loss", "loss_scale1", "loss_scale2", "loss_scale3", "val_loss",
                   "epoch_time_s", "images_per_s", "peak_memory_mb", *SYNTH_VAL_COLUMNS, *GRAD_NORM_COLUMNS)
_OPTIONAL_HISTORY = (*SYNTH_VAL_COLUMNS, *GRAD_NORM_COLUMNS)
# RD++ runs only (rdpp.LOSS_TERMS): the image-weighted epoch means of its loss terms, after HISTORY_COLUMNS
RDPP_LOSS_COLUMNS = tuple(f"loss_{term}" for term in RDPP_LOSS_TERMS)
# metrics.json key -> label; all are fractions in [0, 1], shown in percent.
METRICS: dict[str, str] = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "aupro_5pct": "AUPRO to FPR 0.05",
    "aupimo": "AUPIMO (mean)",
    "f1_max": "F1-max (test-tuned)",
    "accuracy": "accuracy @val-thr",
    "precision": "precision @val-thr",
    "recall": "recall @val-thr",
    "f1": "F1 @val-thr",
    "seg_f1": "SegF1 @val-thr",
    "seg_f1_max": "SegF1-max (test-tuned)",
}
TESTED_ONLY = ("spro",)  # read for the paired tables only (MVTec LOCO; report_kinds.py shows it per anomaly type)
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
                   "inference_ms_per_image", "peak_memory_mb", "teacher_weights", "epochs", "image_size",
                   "aupro_5pct", "aupimo", "seg_f1", "seg_f1_max")
RUN_FIRST = "run `main.py train` and `main.py test` first"


@dataclass(frozen=True)
class RunKey:
    """Identity of one run: (backbone, category, seed) and the method; its folder is named by the arm label
    (backbone_facts.arm_label: the bare backbone under RD4AD, ``backbone+rdpp`` under RD++)."""

    backbone: str
    category: str
    seed: int
    method: str = DEFAULT_METHOD

    @property
    def arm(self) -> str:
        return arm_label(self.backbone, self.method)

    @property
    def relative(self) -> Path:
        return Path(self.arm) / self.category / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.arm}/{self.category}/seed{self.seed}"


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
    return RunKey(config["backbone"], config["category"], int(config["seed"]), config.get("method") or DEFAULT_METHOD)


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
    """history.csv: one row per epoch, ``HISTORY_COLUMNS`` (6 significant digits; empty when not measured), then
    ``RDPP_LOSS_COLUMNS`` when the rows hold them (RD++ runs)."""
    columns = HISTORY_COLUMNS + (RDPP_LOSS_COLUMNS if history and RDPP_LOSS_COLUMNS[0] in history[0] else ())
    lines = [",".join(columns)]
    # rows of a run resumed from before the synthetic validation (or the gradient norms) existed lack their columns
    lines += [",".join(_format_number(row.get(c) if c in _OPTIONAL_HISTORY else row[c]) for c in columns)
              for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_history(directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's history.csv as a DataFrame, or None when the run has none yet."""
    path = Path(directory) / HISTORY_FILE
    return pd.read_csv(path) if path.is_file() else None


def steady_images_per_s(history: pd.DataFrame | None) -> float | None:
    """Mean training images/s of a run's history (``read_history``) without its first epoch (warm-up), when
    there are others; None without a history."""
    if history is None or history.empty:
        return None
    speeds = history["images_per_s"].astype(float).tolist()
    steady = speeds[1:] or speeds
    return sum(steady) / len(steady)


# ---------------------------------------------------------------------------------------------- scores and maps

SCORES_COLUMNS = ("path", "defect_type", "label", "score")
MAPS_ARRAYS = ("maps", "masks", "paths")
RETEST = "test"
RETRAIN = "train"


def _how_to_rewrite(path: Path, fix: str) -> str:
    """The command that rewrites a run's file: ``test`` for metrics, scores and maps, ``train`` for config.json."""
    if fix == RETRAIN:
        return "`main.py train` writes it: restore the file or train the run again"
    parents = path.parents
    results = parents[3] if len(parents) > 3 else "RESULTS"
    return f"`main.py test --results {results} --force` rewrites it"


def _results_file_error(path: str | os.PathLike, expected: str, error: BaseException | None = None,
                        fix: str = RETEST) -> RDError:
    """One paragraph naming a results file, what it should hold, what was wrong with it and what rewrites it."""
    found = f" ({type(error).__name__}: {str(error).strip()})" if error is not None else ""
    return RDError(f"{path}: expected {expected}{found}; {_how_to_rewrite(Path(path), fix)}.")


@lru_cache(maxsize=256)
def _read_scores(path: str, mtime_ns: int) -> pd.DataFrame:
    expected = f"a CSV file with the columns {', '.join(SCORES_COLUMNS)} (label 0 or 1, a finite score per image)"
    try:
        frame = pd.read_csv(path, dtype={"path": str, "defect_type": str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise _results_file_error(path, expected, error) from None
    missing = [column for column in SCORES_COLUMNS if column not in frame.columns]
    if missing:
        raise _results_file_error(path, expected + f"; missing column(s) {', '.join(missing)}")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    scores = pd.to_numeric(frame["score"], errors="coerce")
    finite = np.isfinite(scores.to_numpy(dtype=float)).all()
    if not labels.isin([0, 1]).all() or not finite or frame["path"].isna().any():
        raise _results_file_error(path, expected + "; found a row with a missing path, a label other than 0/1 or a "
                                                   "score that is not a finite number")
    if frame["path"].duplicated().any():
        raise _results_file_error(path, expected + f"; image {frame.loc[frame['path'].duplicated(), 'path'].iloc[0]} "
                                                   "is listed twice")
    frame = frame.assign(label=labels.astype(int), score=scores.astype(float),
                         defect_type=frame["defect_type"].fillna(""))
    return frame[list(SCORES_COLUMNS)]


def load_scores(directory: str | os.PathLike) -> pd.DataFrame:
    """A run's scores.csv (path, defect_type, label, score), sorted by path; a bad file is an RDError naming it."""
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


def _check_maps(path: str, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """maps.npz's arrays have the shapes and types of ``save_maps``, or an RDError naming the file."""
    expected = "an .npz archive from `main.py test` with maps (N, H, W) floats, masks (N, H, W) and N paths"
    missing = [name for name in MAPS_ARRAYS if name not in data]
    if missing:
        raise _results_file_error(path, expected + f"; missing array(s) {', '.join(missing)}")
    maps, masks, paths = data["maps"], data["masks"], data["paths"]
    if maps.ndim != 3 or masks.shape != maps.shape or paths.shape != (maps.shape[0],):
        raise _results_file_error(path, expected + f"; found maps {maps.shape}, masks {masks.shape}, "
                                                   f"paths {paths.shape}")
    if maps.dtype.kind != "f" or masks.dtype.kind not in "biu" or paths.dtype.kind not in "US":
        raise _results_file_error(path, expected + f"; found dtypes maps {maps.dtype}, masks {masks.dtype}, "
                                                   f"paths {paths.dtype}")
    return data


@lru_cache(maxsize=4)  # one category's maps at 256 px are ~30 MB per run: keep only a few in memory
def _read_maps(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        expected = "an .npz archive written by `main.py test` (maps, masks, paths)"
        raise _results_file_error(path, expected, error) from None
    return _check_maps(path, arrays)


def load_maps(directory: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """A run's maps.npz (maps, masks, paths), or None when the run saved no maps; a bad file is an RDError."""
    path = Path(directory) / MAPS_FILE
    if not path.is_file():
        return None
    return _read_maps(str(path), path.stat().st_mtime_ns)


# ---------------------------------------------------------------------------------------------- instrument files

SCALES_COLUMNS = ("map", "kind", "scale", "image_auroc", "pixel_auroc", "aupro")
REGIONS_COLUMNS = ("path", "region", "area_px", "area_fraction", "max_score", "overlap_auc")
AUPIMO_COLUMNS = ("path", "defect_type", "aupimo")


@lru_cache(maxsize=64)
def _read_table(path: str, mtime_ns: int, columns: tuple[str, ...], numeric: tuple[str, ...]) -> pd.DataFrame:
    expected = f"a CSV file with the columns {', '.join(columns)} ({', '.join(numeric)} numbers)"
    try:
        frame = pd.read_csv(path, dtype={"path": str, "map": str, "kind": str, "defect_type": str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise _results_file_error(path, expected, error) from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise _results_file_error(path, expected + f"; missing column(s) {', '.join(missing)}")
    values = frame[list(numeric)].apply(pd.to_numeric, errors="coerce")
    if (values.isna() & frame[list(numeric)].notna()).any().any():
        raise _results_file_error(path, expected + "; found a value that is not a number")
    return frame[list(columns)].assign(**{column: values[column].astype(float) for column in numeric})


def _load_table(directory: str | os.PathLike, name: str, columns: tuple[str, ...],
                numeric: tuple[str, ...]) -> pd.DataFrame | None:
    path = Path(directory) / name
    if not path.is_file():
        return None
    return _read_table(str(path), path.stat().st_mtime_ns, columns, numeric).copy()


def load_scales(directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's scales.csv (the scale ablation; metrics NaN where not measured), or None when it has none."""
    return _load_table(directory, SCALES_FILE, SCALES_COLUMNS, SCALES_COLUMNS[2:])


def load_regions(directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's regions.csv (one row per ground-truth region), or None when it has none."""
    return _load_table(directory, REGIONS_FILE, REGIONS_COLUMNS, REGIONS_COLUMNS[1:])


def write_aupimo(directory: str | os.PathLike, paths: Iterable[str], defect_types: Iterable[str],
                 values: Iterable[float]) -> None:
    """aupimo.csv: one row per anomalous test image (path, defect type, its AUPIMO; NaN where not computed),
    the per-image units of the paired tests across backbones (same paths, same order)."""
    write_csv(Path(directory) / AUPIMO_FILE, AUPIMO_COLUMNS, zip(paths, defect_types, values))


def load_aupimo(directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's aupimo.csv (AUPIMO NaN where not computed), or None when it has none (no masks, or tested
    before AUPIMO existed)."""
    return _load_table(directory, AUPIMO_FILE, AUPIMO_COLUMNS, AUPIMO_COLUMNS[2:])


# ---------------------------------------------------------------------------------------------- all runs

def _read_results_json(path: Path, expected: str, fix: str = RETEST) -> dict[str, Any]:
    """A results JSON file as a dict (strict ``null`` and Python's ``NaN``/``Infinity`` both accepted)."""
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _results_file_error(path, expected, error, fix) from None
    if not isinstance(data, dict):
        raise _results_file_error(path, expected + f"; found a JSON {type(data).__name__}", fix=fix)
    return data


def _number(value: Any, path: Path | None = None, key: str = "") -> float:
    """A metric as float; ``null`` (not measured) becomes NaN; anything but a number is an RDError."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _results_file_error(path or "metrics.json", f"a number or null for {key!r}, found {value!r}")
    return float(value)


def _text(config: dict, name: str) -> str:
    """A config value as text; ``unknown`` when the run did not record it."""
    value = config.get(name)
    return "unknown" if value is None else str(value)


def format_hardware(hardware: Any) -> str:
    """config["hardware"] as one short string (a dict becomes sorted ``key=value`` pairs)."""
    if isinstance(hardware, dict):
        return ", ".join(f"{key}={value}" for key, value in sorted(hardware.items()) if value is not None)
    return "unknown" if hardware is None else str(hardware)


def _data_format(config: dict) -> str:
    """The run's data format (config "data": {"data_format"}); runs from before it was recorded were MVTec layout."""
    data = config.get("data")
    value = data.get("data_format") if isinstance(data, dict) else None
    return str(value) if value else "mvtec"


def _last_history_epoch(directory: Path) -> float:
    """The last epoch history.csv records (NaN without one): how far a run's training went."""
    path = directory / HISTORY_FILE
    try:
        epochs = pd.read_csv(path, usecols=["epoch"])["epoch"] if path.is_file() else pd.Series(dtype=float)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise _results_file_error(path, f"a CSV file with the columns {', '.join(HISTORY_COLUMNS)}", error) from None
    return float(pd.to_numeric(epochs, errors="coerce").max()) if len(epochs) else float("nan")


def _selected_synth_aupro(directory: Path, selected_epoch: float) -> float:
    """The synthetic-validation AUPRO (history.csv) of the epoch a run evaluates; NaN when not measured there."""
    path = directory / HISTORY_FILE
    if not path.is_file() or np.isnan(selected_epoch):
        return float("nan")
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise _results_file_error(path, f"a CSV file with the columns {', '.join(HISTORY_COLUMNS)}", error) from None
    if "synth_aupro" not in history or "epoch" not in history:
        return float("nan")
    values = pd.to_numeric(history.loc[pd.to_numeric(history["epoch"], errors="coerce") == selected_epoch,
                                       "synth_aupro"], errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else float("nan")


def synthetic_saturation_note(frame: pd.DataFrame) -> str | None:
    """One line for the report: how many runs scored synthetic AUPRO above ``SYNTH_SATURATION`` at their selected
    epoch (``selected_synth_aupro``): a saturated synthetic set no longer tells epochs or settings apart; and the
    categories whose runs' config.json records a grayscale set (``synthetic_grayscale``). None when no run has the
    score."""
    scores = frame["selected_synth_aupro"].dropna() if "selected_synth_aupro" in frame else pd.Series(dtype=float)
    if scores.empty:
        return None
    saturated = int((scores > SYNTH_SATURATION).sum())
    ending = (" (saturated: there the synthetic set no longer tells epochs or settings apart; ties go to the "
              "earlier epoch and the shorter schedule)." if saturated else ".")
    gray = sorted(set(frame.loc[frame["synthetic_grayscale"].astype(bool), "category"])) \
        if "synthetic_grayscale" in frame else []
    if gray:
        ending += (f" Grayscale images ({', '.join(gray)}): their synthetic anomalies are grayscale too, so the set "
                   "rewards no colour cue.")
    return (f"**Synthetic validation:** {saturated} of {len(scores)} runs scored synthetic AUPRO > "
            f"{SYNTH_SATURATION} at their selected epoch{ending}")


def _trained_epochs(directory: Path, selection: str, metrics: dict, metrics_path: Path) -> float:
    """How many epochs the run trained: the evaluated checkpoint's (metrics.json "epochs"), or, for a run whose
    model was selected at an earlier epoch (synthetic-val), how far history.csv says training went."""
    checkpoint_epochs = _number(metrics.get("epochs"), metrics_path, "epochs")
    if selection == "last":
        return checkpoint_epochs
    last = _last_history_epoch(directory)
    return last if not np.isnan(last) else checkpoint_epochs


def _run_row(directory: Path) -> dict[str, Any]:
    """One run as a flat row: identity, provenance from config.json, numbers from metrics.json."""
    config_path, metrics_path = directory / CONFIG_FILE, directory / METRICS_FILE
    config = _read_results_json(config_path, "a JSON object (backbone, category, seed, ...)", RETRAIN)
    metrics = _read_results_json(metrics_path, "a JSON object written by `main.py test` (image_auroc, ...)")
    try:
        backbone, category, seed = str(config["backbone"]), str(config["category"]), int(config["seed"])
        method = str(config.get("method") or DEFAULT_METHOD)  # runs from before RD++ existed are RD4AD
    except (KeyError, TypeError, ValueError) as error:
        raise _results_file_error(config_path, "a JSON object with backbone, category and an integer seed",
                                  error, RETRAIN) from None
    efficiency = metrics.get("efficiency") or {}
    if not isinstance(efficiency, dict):
        raise _results_file_error(metrics_path, "an object (or null) under 'efficiency'")
    selection = str(config.get("selection") or "last")
    requested = config.get("epochs")
    requested_epochs = float(requested) if isinstance(requested, (int, float)) and not isinstance(requested, bool) \
        else float("nan")
    trained = _trained_epochs(directory, selection, metrics, metrics_path)
    synthetic_set = config.get("synthetic_set")  # synthval's provenance; absent before generator version 3
    return {
        "backbone": arm_label(backbone, method),  # the arm: what pairs name and the statistics key by
        "registered_backbone": backbone,  # the registry's name: family, capacity and weights facts
        "method": method,
        "category": category,
        "seed": seed,
        "kind": category_group(category),
        "dataset": _data_format(config),
        "run_dir": str(directory),
        "data_root": _text(config, "data_root"),
        "image_size": _text(config, "image_size"),
        "epochs": _text(config, "epochs"),
        "requested_epochs": requested_epochs,
        "trained_epochs": trained,
        "unfinished": bool(trained < requested_epochs),  # NaN compares False: unknown is not flagged
        "selection": selection,
        **recorded_settings(config),  # the rest of the recipe, for compare's shared-protocol check (protocol.py)
        "selected_epoch": _number(metrics.get("selected_epoch"), metrics_path, "selected_epoch"),
        "selected_synth_aupro": _selected_synth_aupro(directory, _number(
            metrics.get("selected_epoch", metrics.get("epochs")), metrics_path, "selected_epoch")),
        "synthetic_grayscale": isinstance(synthetic_set, dict) and synthetic_set.get("grayscale") is True,
        "teacher_weights": _text(config, "teacher_weights"),
        "teacher_imagenet_top1": _number(config.get("teacher_imagenet_top1"), directory / CONFIG_FILE,
                                         "teacher_imagenet_top1"),
        "hardware": format_hardware(config.get("hardware")),
        "threshold": _number(metrics.get("threshold"), metrics_path, "threshold"),
        "threshold_rule": str(metrics.get("threshold_rule") or "unknown"),
        **{key: _number(metrics.get(key), metrics_path, key) for key in (*METRICS, *TESTED_ONLY)},
        **{key: _number(efficiency.get(key), metrics_path, f"efficiency.{key}") for key in EFFICIENCY},
    }


def load_runs(results: str | os.PathLike) -> pd.DataFrame:
    """Every evaluated run under ``results``: one row per run, sorted by category, backbone, seed.

    Columns: identity (``backbone`` is the arm label, backbone_facts.arm_label: the backbone itself for RD4AD runs,
    ``backbone+rdpp`` for RD++ ones; ``registered_backbone`` and ``method`` are its parts), ``kind`` (the category's
    report group), ``dataset`` (data format), provenance,
    ``requested_epochs`` / ``trained_epochs`` / ``unfinished`` (checkpoint short of the requested epochs),
    ``selection`` ("last" or "synthetic-val"), the rest of the recipe as recorded (``protocol.recorded_settings``:
    split file hash, validation fraction, split seed, held-out names' hash, batch size, lr, betas, precision, model
    knobs, tuned_by), ``selected_synth_aupro`` (history.csv's synthetic AUPRO at the evaluated epoch),
    ``synthetic_grayscale`` (config.json says the synthetic validation images are grayscale) and every metric (NaN
    when not measured).
    """
    results = Path(results)
    if not results.is_dir():
        raise RDError(f"results directory {results} does not exist: {RUN_FIRST}")
    directories = find_runs(results)
    if not directories:
        raise RDError(f"no evaluated runs (<backbone>/<category>/seed<k>/metrics.json) under {results}: {RUN_FIRST}")
    frame = pd.DataFrame([_run_row(directory) for directory in directories])
    duplicated = frame.duplicated(["backbone", "category", "seed"], keep=False)
    if duplicated.any():
        raise RDError(f"{', '.join(frame.loc[duplicated, 'run_dir'])}: expected one run per backbone, category and "
                      "seed, but these config.json files name the same one")
    return frame.sort_values(["category", "backbone", "seed"], ignore_index=True)


def untested_runs(results: str | os.PathLike) -> list[str]:
    """Run directories with a config.json but no metrics.json: trained, not yet tested."""
    evaluated = set(find_runs(results))
    return [str(path) for path in find_runs(results, require=CONFIG_FILE) if path not in evaluated]


def write_summary(results: str | os.PathLike) -> Path:
    """Gather one row per evaluated run into ``results/summary.csv`` (``backbone``: the run's arm label)."""
    rows = []
    for directory in find_runs(results):
        metrics = read_json(directory / METRICS_FILE)
        flat = metrics | metrics.get("efficiency", {})
        flat["backbone"] = arm_label(str(flat.get("backbone")), str(metrics.get("method") or DEFAULT_METHOD))
        rows.append({c: flat.get(c) for c in SUMMARY_COLUMNS})
    path = Path(results) / SUMMARY_FILE
    atomic_write_text(path, pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(index=False))
    return path
