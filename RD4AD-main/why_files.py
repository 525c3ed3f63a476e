"""The results files of two Why instruments: where they live, and the one place that writes and reads them.

- ``<results>/<backbone>/<category>/teacher_locality.json`` and ``teacher_erf.npz`` (``main.py analyse``): the
  frozen teacher's effective receptive field per tap, measured once per (backbone, category) on the validation
  normals: radii in the JSON, the mean ERF maps and every image's ring profile in the npz.
- ``<results>/teacher_cka/<category>/<a>-vs-<b>.json`` (``main.py analyse``, a < b by name): linear CKA between
  the two teachers' taps on the same normals.
- ``<run>/selection_audit.csv`` (``main.py train --audit-test``): the TEST metrics at the epochs where synthetic
  validation ran. An audit only: no selection, threshold or tuning reads it; the report's audit part
  (why_audit.py) is its only reader, the training hook (selection_audit.py) its only writer.

None of these lies at ``<backbone>/<category>/seed<k>/metrics.json``, so ``runs.find_runs``/``load_runs`` never
take them for runs. No model code here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

import runs
from errors import RDError

__all__ = ["AUDIT_COLUMNS", "AUDIT_FILE", "CKA_FOLDER", "ERF_FILE", "LOCALITY_FILE", "LOCALITY_VERSION", "cka_path",
           "erf_path", "locality_json", "locality_path", "locality_state", "outdated_locality", "read_audit",
           "read_cka", "read_locality", "write_audit", "write_cka", "write_locality"]

LOCALITY_FILE = "teacher_locality.json"
ERF_FILE = "teacher_erf.npz"
CKA_FOLDER = "teacher_cka"
# bump when the measurement changes: analyse measures older files again, the report names them as outdated.
# 2: the ERF rings are centred on the receptive-field centre from the teacher's layers (1: the patchify midpoint,
# 1.5-7.5 px off for ResNet's padded stride-2 layers at taps 1-3)
LOCALITY_VERSION = 2
AUDIT_FILE = "selection_audit.csv"
AUDIT_COLUMNS = ("epoch", "synth_aupro", "test_image_auroc", "test_pixel_auroc", "test_aupro")
_REDO = "rerun `main.py analyse --results {results} --force`"


def locality_path(results: str | os.PathLike, backbone: str, category: str) -> Path:
    return Path(results) / backbone / category / LOCALITY_FILE


def erf_path(results: str | os.PathLike, backbone: str, category: str) -> Path:
    return Path(results) / backbone / category / ERF_FILE


def cka_path(results: str | os.PathLike, category: str, a: str, b: str) -> Path:
    """The pair's CKA file; the pair is unordered (CKA is symmetric): named by the two in name order."""
    first, second = sorted((a, b))
    return Path(results) / CKA_FOLDER / category / f"{first}-vs-{second}.json"


# ---------------------------------------------------------------------------------------------- teacher locality

def locality_json(path: str | os.PathLike) -> tuple[Any, bool]:
    """A teacher_locality.json (or CKA JSON) as read (None when there is no file) and whether the current
    ``analyse`` wrote it: the one place that checks LOCALITY_VERSION."""
    path = Path(path)
    if not path.is_file():
        return None, False
    record = runs.read_json(path)
    return record, isinstance(record, dict) and record.get("version") == LOCALITY_VERSION


def outdated_locality(results: str | os.PathLike, backbone: str, category: str) -> bool:
    """Whether the (backbone, category) has a teacher_locality.json written by an older ``analyse`` (which
    ``read_locality`` does not read; ``analyse`` measures it again)."""
    record, current = locality_json(locality_path(results, backbone, category))
    return record is not None and not current


def write_locality(results: str | os.PathLike, backbone: str, category: str, record: dict[str, Any],
                   maps: np.ndarray, profiles: np.ndarray) -> Path:
    """The ERF files of one (backbone, category): maps (taps, H, W), profiles (taps, images, rings); the npz
    first, so that a JSON (what marks the measurement done) never points at a missing npz."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, maps=maps.astype(np.float32), profiles=profiles.astype(np.float64))

    runs.atomic_write(erf_path(results, backbone, category), write)
    path = locality_path(results, backbone, category)
    runs.atomic_write_json(path, record | {"version": LOCALITY_VERSION})
    return path


def locality_state(results: str | os.PathLike, backbone: str, category: str) -> tuple[dict[str, Any] | None, bool]:
    """``read_locality``'s record and ``outdated_locality``'s answer from one read of the JSON."""
    path, arrays = locality_path(results, backbone, category), erf_path(results, backbone, category)
    record, current = locality_json(path)
    if not current:
        return None, record is not None
    expected = "taps (a list of tap records with erf_r50_px and erf_r90_px) and its teacher_erf.npz"
    try:
        with np.load(arrays, allow_pickle=False) as data:
            maps, profiles = data["maps"], data["profiles"]
        taps = record["taps"]
        if maps.ndim != 3 or profiles.ndim != 3 or not len(taps) == len(maps) == len(profiles):
            raise ValueError(f"maps {maps.shape}, profiles {profiles.shape} for {len(taps)} taps")
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise RDError(f"{path}: expected {expected} ({type(error).__name__}: {error}); "
                      + _REDO.format(results=results)) from None
    return record | {"maps": maps, "profiles": profiles}, False


def read_locality(results: str | os.PathLike, backbone: str, category: str) -> dict[str, Any] | None:
    """The ERF record of one (backbone, category) with its arrays (``maps``, ``profiles``), or None when it was
    not measured (or by an older version); a damaged file is an RDError naming it."""
    return locality_state(results, backbone, category)[0]


def write_cka(results: str | os.PathLike, category: str, a: str, b: str, record: dict[str, Any]) -> Path:
    path = cka_path(results, category, a, b)
    runs.atomic_write_json(path, record | {"version": LOCALITY_VERSION, "backbones": sorted((a, b))})
    return path


def read_cka(results: str | os.PathLike, category: str, a: str, b: str) -> dict[str, Any] | None:
    """The pair's CKA record (``taps``: one ``{"tap", "cka", ...}`` each), or None when not measured."""
    path = cka_path(results, category, a, b)
    record, current = locality_json(path)
    if not current:
        return None
    if not isinstance(record.get("taps"), list) or not all(isinstance(t, dict) and "cka" in t for t in record["taps"]):
        raise RDError(f"{path}: expected taps, a list of {{tap, cka}} records; " + _REDO.format(results=results))
    return record


# ---------------------------------------------------------------------------------------------- selection audit

def write_audit(run_directory: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """selection_audit.csv of a run: one row per audited epoch (``AUDIT_COLUMNS``; empty when not measured)."""
    path = Path(run_directory) / AUDIT_FILE
    runs.write_csv(path, AUDIT_COLUMNS, ([row.get(column) for column in AUDIT_COLUMNS] for row in rows))
    return path


def read_audit(run_directory: str | os.PathLike) -> pd.DataFrame | None:
    """A run's selection_audit.csv sorted by epoch, or None when the run was trained without --audit-test.
    For the audit report and the audit's own resume only: never for selection, thresholds or tuning."""
    path = Path(run_directory) / AUDIT_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise RDError(f"{path}: expected a CSV file with the columns {', '.join(AUDIT_COLUMNS)} ({error}); "
                      f"retrain the run with --audit-test --restart to write it again") from None
    missing = [column for column in AUDIT_COLUMNS if column not in frame.columns]
    if missing:
        raise RDError(f"{path}: expected the columns {', '.join(AUDIT_COLUMNS)}; missing {', '.join(missing)}")
    frame = frame[list(AUDIT_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if frame["epoch"].isna().any() or frame["epoch"].duplicated().any():
        raise RDError(f"{path}: every row needs a whole, distinct epoch number; retrain with --audit-test --restart")
    return frame.sort_values("epoch", ignore_index=True)
