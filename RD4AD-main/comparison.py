"""The comparison's numbers: which backbone pairs are compared, the resampling replicates of every run, the
paired tests per category and seed, and the tests over categories (overall and per group).

The metrics are paired_metrics.PAIRED_METRICS, each where some run of the dataset measured it. Per category and
seed, the unit of resampling is the test image (with its mask), the same draws for every backbone and seed of a
category; every replicate metric is a weighted sum of per-image statistics (significance.py, resample_metrics.py;
AUPIMO's mean over the anomalous images both runs of a pair scored; sPRO has no per-image statistics), so a study
of 15 categories x 3 seeds x 2 backbones at 256 px takes seconds, not hours. Over categories, every pair, group and
metric is answered by inference.py from the cells (category, seed) both backbones ran: both answers, each
interval from the same t statistic as its p. Point estimates come from metrics.json (the tables' numbers).
Tables are formatted in report_tables.py and worded in claims.py; nothing here formats text for readers except
the notes. The primary questions and their answers are decision.py's; this module corrects the exploratory family.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits  # installed with scikit-learn
from tqdm import tqdm

from backbone_facts import FAIR_PAIR, backbone_family, registry_order
from categories import OTHER_GROUP, group_order
from errors import RDError
from metrics import AUPRO_LIMITS
from runs import MAPS_FILE, load_aupimo, load_maps, load_scores
from inference import ALPHA, CONFIDENCE, Answers, answer_columns, compare_arms, paired_cells
from inference import category_intervals as cell_intervals
from paired_metrics import CATEGORY_TESTED, DEFAULT_PRIMARY_METRICS, METRIC_LABELS, PAIRED_METRICS, measured_metrics
from resample_metrics import mean_replicates, seg_f1_counts, seg_f1_replicates
from significance import (PixelStats, aupro_replicates, auroc_replicates, benjamini_hochberg, binned_metrics,
                          bootstrap_p_value, delong_test, percentile_interval, pixel_replicates, pixel_stats,
                          seeded_rng, stratified_multiplicities)

__all__ = ["AGGREGATE_COLUMNS", "ALPHA", "ARM", "CONFIDENCE", "CategoryDraws", "Comparison", "DEFAULT_PRIMARY_METRICS",
           "EXPLORATORY", "LOW_FPR_LIMIT", "METRIC_LABELS", "NOT_AVAILABLE", "N_BOOT", "OVERALL", "PAIRED_METRICS",
           "PER_IMAGE", "POWER", "PRIMARY", "RunResamples", "TEST_COLUMNS", "aggregate_tests", "answer_pair",
           "answer_row", "backbone_family", "category_intervals", "compare_runs", "compute_resamples", "epoch_text",
           "group_members", "pair_cells", "pair_label", "parse_pairs", "per_category_tests", "per_defect_stats",
           "read_config_json", "read_pairs_config", "resolve_pairs", "retest_command", "run_index", "run_name",
           "run_resamples", "shared_categories", "unfinished_flags", "with_exploratory"]

# The metrics tested (PAIRED_METRICS: metrics.json key -> label, fractions in [0, 1]) and every metric's label
# (METRIC_LABELS) are paired_metrics.py's.
ARM = "backbone"  # the runs table's arm column (inference.py takes arm names as opaque strings)
POWER = 0.8
PRIMARY, EXPLORATORY = "primary", "exploratory"  # the two families of tests (decision.py)
# 2000 resamples: the 2.5 % and 97.5 % percentiles then rest on 50 resamples each, which keeps their Monte Carlo
# error well below the intervals' width (Efron & Tibshirani recommend >= 1000 for percentile intervals). The per-run
# statistics, not the resamples, dominate the cost: a 15 x 3 x 2 study at 256 px took 14.0 s with 1000 and 15.0 s
# with 2000 on the 2-core CPU (benchmarks/compare_benchmark.py).
N_BOOT = 2000
MIN_PER_CLASS = 2  # DeLong needs at least two defective and two normal images
LOW_FPR_LIMIT = AUPRO_LIMITS[1]  # aupro_5pct's limit (0.05: the low-false-alarm one that `test` reports)
PIXEL_KEYS = ("pixel_auroc", "aupro", "aupro_5pct", "seg_f1")  # resampled from maps.npz
NOT_AVAILABLE = "n/a"
OVERALL = "overall"
AGGREGATE_COLUMNS = ["pair", "group", "metric", "n_categories", "n_cells", "seeds", "mean_diff", "ci_low_fixed",
                     "ci_high_fixed", "p_fixed", "p_fixed_bh", "ci_low_new", "ci_high_new", "p_new", "p_new_bh",
                     "p_signed_rank", "min_reachable_p_signed_rank", "wins_a", "wins_b", "dataset", "family",
                     "df_fixed", "df_new", "signed_rank_method", "seed_counts", "excluded", "note_fixed", "note_new",
                     "note", "flags"]
TEST_COLUMNS = ["pair", "backbone_a", "backbone_b", "category", "seed", "metric", "test", "n_images", "n_defective",
                "n_unmatched", "value_a", "value_b", "difference", "ci_low", "ci_high", "p_value", "p_bh", "note",
                "flags"]


# ----------------------------------------------------------------------------------------------------
# which pairs
# ----------------------------------------------------------------------------------------------------
def _pair_from(value: Any, source: str) -> tuple[str, str]:
    """One pair from ``"a,b"`` or ``["a", "b"]``; anything else is an RDError naming ``source``."""
    names = value.split(",") if isinstance(value, str) else value
    if isinstance(names, (list, tuple)) and len(names) == 2 and all(isinstance(n, str) for n in names):
        a, b = (name.strip() for name in names)
        if a and b and a != b:
            return a, b
    raise RDError(f"{source}: expected a pair of two different backbones, as a,b or [\"a\", \"b\"] "
                  f"(e.g. resnet50,convnext_tiny), got {value!r}")


def parse_pairs(value: Any, source: str = "--pair") -> list[tuple[str, str]] | None:
    """Pairs from what a user or papermill gives: None or "" (the default), "a,b", ["a", "b"], ["a,b", "c,d"],
    or [["a", "b"], ...]; duplicates dropped, order kept."""
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) and "," not in v for v in value):
        items = [list(value)]  # ["a", "b"]: one pair
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise RDError(f"{source}: expected a,b or a list of pairs, got {value!r}")
    pairs = [_pair_from(item, source) for item in items]
    return list(dict.fromkeys(pairs))


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A study config file as a JSON object; anything else is an RDError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RDError(f"--config {path}: expected a readable JSON file ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise RDError(f"--config {path}: expected a JSON object, found a JSON {type(data).__name__}")
    return data


def read_pairs_config(path: str | Path) -> list[tuple[str, str]] | None:
    """The "pairs" of a study config file (other keys are for other commands), or None when it has none."""
    data = read_config_json(path)
    if "pairs" not in data:
        return None
    pairs = data["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise RDError(f"--config {path}: \"pairs\" must be a non-empty list of [\"a\", \"b\"] pairs, got {pairs!r}")
    return [_pair_from(pair, f"--config {path} \"pairs\"") for pair in pairs]


def resolve_pairs(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """The pairs to compare: those given (each backbone must have runs), else the fair pair when both are present,
    else the only two backbones present; otherwise an error listing the backbones and showing --pair."""
    present = sorted(set(runs_frame["backbone"]))
    if pairs:
        for pair in pairs:
            missing = [name for name in pair if name not in present]
            if missing:
                raise RDError(f"--pair {','.join(pair)}: no evaluated runs of {', '.join(missing)}; backbones found: "
                              f"{', '.join(present)}")
        return list(pairs)
    if set(FAIR_PAIR) <= set(present):
        return [FAIR_PAIR]
    if len(present) == 2:
        return [tuple(sorted(present, key=registry_order))]
    example = ",".join(present[:2]) if len(present) >= 2 else "resnet50,convnext_tiny"
    raise RDError(f"which backbones to compare? Runs of {len(present)} backbone(s) were found ({', '.join(present)}) "
                  f"and not both of the fair pair {','.join(FAIR_PAIR)}: name the pairs with --pair a,b (repeatable, "
                  f"e.g. --pair {example}) or --config FILE holding \"pairs\"")


def pair_label(pair: tuple[str, str]) -> str:
    """How tables name a pair: "a vs b"."""
    return f"{pair[0]} vs {pair[1]}"


def run_name(row: pd.Series) -> str:
    return f"{row['backbone']}/{row['category']}/seed{row['seed']}"


def epoch_text(value: float) -> str:
    return NOT_AVAILABLE if np.isnan(value) else str(int(value))


def unfinished_flags(frame: pd.DataFrame, with_name: bool = True) -> str:
    """The flag of a table row: the unfinished runs (checkpoint short of the requested epochs) among the runs it
    summarises, as "UNFINISHED: backbone/category/seedK (trained/requested epochs)"; "" when none."""
    unfinished = frame[frame["unfinished"]]
    if unfinished.empty:
        return ""
    names = ", ".join((run_name(row) if with_name else f"seed {row['seed']}") +
                      f" ({epoch_text(row['trained_epochs'])}/{epoch_text(row['requested_epochs'])} epochs)"
                      for _, row in unfinished.iterrows())
    return f"UNFINISHED: {names}"


def retest_command(results: str) -> str:
    """The command that (re)writes every run's metrics, scores and maps."""
    return f"python RD4AD-main/main.py test --results {results} --force"


# ----------------------------------------------------------------------------------------------------
# replicates of every run
# ----------------------------------------------------------------------------------------------------
@dataclass
class CategoryDraws:
    """A category's test images common to every compared run, and the image multiplicities of every resample."""

    category: str
    paths: np.ndarray
    labels: np.ndarray
    defect_types: np.ndarray
    weights: np.ndarray  # (n_boot, n_images)


@dataclass
class RunResamples:
    """One run's metrics on the common images and on every resample (NaN where not available), with the notes."""

    n_images: int
    n_unmatched: int
    values: dict[str, float]  # on the common images
    replicates: dict[str, np.ndarray | None]
    pixel_note: str = ""  # why there are no pixel replicates
    binning_error: dict[str, float] = field(default_factory=dict)  # |binned - metrics.json| on all images
    pro_curve: tuple[np.ndarray, np.ndarray] | None = None
    per_defect: dict[str, dict[str, float]] = field(default_factory=dict)
    exact: bool = False
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. AUPIMO of each common image (NaN: none)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it has no replicates (besides pixel_note)


def _common_images(category: str, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The test images every run of a category scored (sorted by path), with labels checked to agree."""
    common = set.intersection(*(set(frame["path"]) for frame in frames.values()))
    if not common:
        raise RDError(f"{category}: the runs' scores.csv files share no test image path ({', '.join(frames)}); "
                      "were they evaluated on different data?")
    reference = None
    for run_dir, frame in frames.items():
        chosen = frame[frame["path"].isin(common)].sort_values("path", ignore_index=True)
        if reference is None:
            reference = chosen
        elif not (chosen["label"].to_numpy() == reference["label"].to_numpy()).all():
            raise RDError(f"{run_dir}: a test image has a different label in its scores.csv than in another run's "
                          f"of {category}; were the runs evaluated on different data?")
    return reference


def _defect_subsets(draws: CategoryDraws) -> dict[str, np.ndarray]:
    """Per defect type, the 0/1 weights of the good images and that type's images (its metrics' test set)."""
    good = draws.labels == 0
    types = sorted(set(draws.defect_types[draws.labels == 1]))
    return {name: (good | (draws.defect_types == name)).astype(np.float64) for name in types}


def _image_part(scores: pd.DataFrame, draws: CategoryDraws) -> tuple[dict, dict, dict]:
    """Image AUROC of the run on the common images, on each resample, and per defect type."""
    chosen = scores.set_index("path").loc[draws.paths, "score"].to_numpy(dtype=np.float64)
    both = 0 < draws.labels.sum() < len(draws.labels)
    if not both:
        return {"image_auroc": float("nan")}, {"image_auroc": None}, {}
    ones = np.ones((1, len(chosen)))
    value = float(auroc_replicates(chosen, draws.labels, ones)[0])
    replicates = auroc_replicates(chosen, draws.labels, draws.weights)
    per_defect = {name: {"image_auroc": float(auroc_replicates(chosen, draws.labels, subset[None, :])[0])}
                  for name, subset in _defect_subsets(draws).items()}
    return {"image_auroc": value}, {"image_auroc": replicates}, per_defect


def _stats_for(run: pd.Series, draws: CategoryDraws) -> tuple[PixelStats | None, np.ndarray | None, str]:
    """The run's pixel statistics on the common images and its per-image SegF1 counts at its threshold, or None
    and the reason."""
    if np.isnan(run["pixel_auroc"]) and np.isnan(run["aupro"]):
        return None, None, "not measured (no ground-truth masks)"
    data = load_maps(run["run_dir"])
    if data is None:
        return None, None, f"no maps.npz in {run['run_dir']}"
    maps_file = Path(run["run_dir"]) / MAPS_FILE
    rewrite = f"`{retest_command(str(Path(run['run_dir']).parents[2]))}` rewrites it"
    index = {str(path): i for i, path in enumerate(data["paths"])}
    missing = [path for path in draws.paths if path not in index]
    if missing:
        raise RDError(f"{maps_file}: expected maps of every test image in its scores.csv, {len(missing)} missing "
                      f"(e.g. {missing[0]}); {rewrite}")
    rows = np.array([index[path] for path in draws.paths])
    masks = data["masks"][rows]
    if not masks.any():
        return None, None, "not measured (the masks hold no defect pixel)"
    try:
        maps = data["maps"][rows]
        return pixel_stats(maps, masks), seg_f1_counts(maps, masks, float(run["threshold"])), ""
    except ValueError as error:
        raise RDError(f"{maps_file}: {error}; {rewrite}") from None


def _aupimo_part(run: pd.Series, draws: CategoryDraws, result: RunResamples) -> None:
    """The run's AUPIMO of each common image (aupimo.csv; NaN for normal and unscored images), or why none."""
    table = load_aupimo(run["run_dir"]) if not np.isnan(run["aupimo"]) else None
    if table is None:
        result.notes["aupimo"] = "not measured (metrics.json aupimo is null: its band is not resolved)" if \
            np.isnan(run["aupimo"]) else f"no aupimo.csv in {run['run_dir']}"
        return
    values = table.drop_duplicates("path").set_index("path")["aupimo"]
    result.per_image["aupimo"] = values.reindex(draws.paths).to_numpy(dtype=np.float64)


def run_resamples(run: pd.Series, draws: CategoryDraws) -> RunResamples:
    """Every resampled metric of one run on its category's draws (and its binned full-sample check); per-image
    metrics (AUPIMO) are kept per image and resampled per pair (only the images both runs scored)."""
    scores = load_scores(run["run_dir"])
    values, replicates, per_defect = _image_part(scores, draws)
    result = RunResamples(len(draws.paths), len(scores) - len(draws.paths), values, replicates, per_defect=per_defect)
    _aupimo_part(run, draws, result)
    stats, counts, result.pixel_note = _stats_for(run, draws)
    if stats is None:
        result.values.update(dict.fromkeys(PIXEL_KEYS, float("nan")))
        result.replicates.update(dict.fromkeys(PIXEL_KEYS))
        return result
    with np.errstate(divide="ignore", invalid="ignore"):
        full_auroc, full_aupro, result.pro_curve = binned_metrics(stats)
        result.replicates["pixel_auroc"], result.replicates["aupro"] = pixel_replicates(stats, draws.weights)
        result.replicates["aupro_5pct"] = aupro_replicates(stats, draws.weights, LOW_FPR_LIMIT)
        result.values["aupro_5pct"] = float(aupro_replicates(stats, np.ones((1, len(stats.normal))), LOW_FPR_LIMIT)[0])
        result.replicates["seg_f1"] = seg_f1_replicates(counts, draws.weights)
        result.values["seg_f1"] = float(seg_f1_replicates(counts, np.ones((1, len(counts))))[0])
        subsets = _defect_subsets(draws)
        if subsets:
            type_auroc, type_aupro = pixel_replicates(stats, np.stack(list(subsets.values())))
            for name, auroc, aupro in zip(subsets, type_auroc, type_aupro):
                result.per_defect.setdefault(name, {}).update(pixel_auroc=float(auroc), aupro=float(aupro))
    result.values.update(pixel_auroc=full_auroc, aupro=full_aupro)
    if result.n_unmatched == 0:
        result.binning_error = {key: abs(result.values[key] - run[key]) for key in PIXEL_KEYS
                                if np.isfinite(run[key])}
    result.exact = stats.exact
    return result


def _category_draws(category: str, frames: dict[str, pd.DataFrame], n_boot: int) -> CategoryDraws:
    common = _common_images(category, frames)
    labels = common["label"].to_numpy(dtype=np.int64)
    weights = stratified_multiplicities(labels, n_boot, seeded_rng("images", category))
    return CategoryDraws(category, common["path"].to_numpy(dtype=object), labels,
                         common["defect_type"].astype(str).to_numpy(dtype=object), weights)


def compute_resamples(runs_frame: pd.DataFrame,
                      n_boot: int) -> tuple[dict[str, CategoryDraws], dict[str, RunResamples]]:
    """Per category the common images and draws, per run (keyed by run_dir) its replicates; one category at a time
    so only that category's maps are in memory."""
    draws, resamples = {}, {}
    categories = sorted(set(runs_frame["category"]))
    # The matrix products are small (one row per resample, one column per image): BLAS threads only spin, and on
    # a shared 2-core machine one thread took 16 s where two took 39 s for a 15 x 3 x 2 study.
    with threadpool_limits(limits=1, user_api="blas"):
        for category in tqdm(categories, desc="resampling", unit="category", leave=False):
            members = runs_frame[runs_frame["category"] == category]
            frames = {row.run_dir: load_scores(row.run_dir) for row in members.itertuples()}
            draws[category] = _category_draws(category, frames, n_boot)
            for _, run in members.iterrows():
                resamples[run["run_dir"]] = run_resamples(run, draws[category])
    return draws, resamples


# ----------------------------------------------------------------------------------------------------
# groups and the categories they share
# ----------------------------------------------------------------------------------------------------
def group_members(runs_frame: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(dataset, group, categories) in report order: each dataset's groups as categories.group_order() lists them
    (groups of other datasets after them, ``other`` last), then ``overall`` (the dataset's every category)."""
    out = []
    for dataset in sorted(set(runs_frame["dataset"])):
        frame = runs_frame[runs_frame["dataset"] == dataset]
        order = list(dict.fromkeys([g for g in group_order(dataset) if g != OTHER_GROUP] + list(group_order())))
        order += sorted(set(frame["kind"]) - set(order))
        for group in order:
            categories = sorted(set(frame.loc[frame["kind"] == group, "category"]))
            if categories:
                out.append((dataset, group, categories))
        out.append((dataset, OVERALL, sorted(set(frame["category"]))))
    return out


def shared_categories(runs_frame: pd.DataFrame, backbones: Iterable[str], categories: Iterable[str],
                      metric: str) -> tuple[list[str], dict[str, str]]:
    """The categories every backbone ran (any seed) with the metric measured, and the others with what they lack.
    Seeds come as they are: a category with more or fewer seeds than another never removes it."""
    backbones, categories = list(backbones), list(categories)
    frame = runs_frame[runs_frame["backbone"].isin(backbones) & runs_frame["category"].isin(categories)]
    measured = frame[metric].notna().groupby([frame["category"], frame["backbone"]]).any().to_dict()
    shared, missing = [], {}
    for category in categories:
        reasons, unmeasured = [], []
        for backbone in backbones:
            if (category, backbone) not in measured:
                reasons.append(f"{backbone} has no run")
            elif not measured[(category, backbone)]:
                unmeasured.append(backbone)
        if unmeasured:
            whose = "" if len(unmeasured) == len(backbones) else f" for {', '.join(unmeasured)}"
            reasons.append(f"{METRIC_LABELS.get(metric, metric)} not measured{whose}")
        if reasons:
            missing[category] = "; ".join(reasons)
        else:
            shared.append(category)
    return shared, missing


def run_index(runs_frame: pd.DataFrame) -> dict[tuple[str, str, int], pd.Series]:
    """(backbone, category, seed) -> the run's row."""
    return {(row["backbone"], row["category"], int(row["seed"])): row for _, row in runs_frame.iterrows()}


# ----------------------------------------------------------------------------------------------------
# per-category tests (one trained model per backbone: per seed)
# ----------------------------------------------------------------------------------------------------
def _tie_note(value_a: float, value_b: float, replicate_diff: np.ndarray | None, metric: str) -> str:
    """Why a pair cannot be tested on this category: both perfect, or identical on every resample; else ""."""
    label = PAIRED_METRICS[metric]
    if value_a == 1.0 and value_b == 1.0:
        return (f"tie at the ceiling: both models reach {label} 1.000 on this test set, so there is no difference "
                "to test")
    if value_a == value_b and replicate_diff is not None and not np.any(replicate_diff):
        return f"identical: both models give the same {label} on this test set and on every resample, so there is " \
               "no difference to test"
    return ""


PER_IMAGE = ("aupimo",)  # metrics kept per image (RunResamples.per_image), resampled over the images both runs scored


def _per_image_pair(metric: str, resampled: tuple[RunResamples, RunResamples],
                    draws: CategoryDraws) -> tuple[float, float, np.ndarray, np.ndarray] | str:
    """A per-image metric of two runs on the images both scored: their means and replicates (the category's draws
    restricted to those images), or why there are none."""
    arrays = [res.per_image.get(metric) for res in resampled]
    if arrays[0] is None or arrays[1] is None:
        return "not tested: " + "; ".join(res.notes.get(metric, "") for res in resampled if metric in res.notes)
    both = np.isfinite(arrays[0]) & np.isfinite(arrays[1])
    if not both.any():
        return f"not tested: no test image has {PAIRED_METRICS[metric]} in both runs"
    means = [float(array[both].mean()) for array in arrays]
    replicates = [mean_replicates(array[both], draws.weights[:, both]) for array in arrays]
    return means[0], means[1], replicates[0], replicates[1]


def _test_row(pair: tuple[str, str], category: str, seed: int, metric: str, runs: tuple[pd.Series, pd.Series],
              resampled: tuple[RunResamples, RunResamples], draws: CategoryDraws, results: str) -> dict[str, Any]:
    a, b = pair
    res_a, res_b = resampled
    row: dict[str, Any] = {
        "pair": pair_label(pair), "backbone_a": a, "backbone_b": b, "category": category, "seed": seed, "metric": metric,
        "test": "DeLong" if metric == "image_auroc" else "bootstrap", "n_images": len(draws.paths),
        "n_defective": int(draws.labels.sum()), "n_unmatched": res_a.n_unmatched + res_b.n_unmatched, "note": "",
        "flags": unfinished_flags(pd.DataFrame(list(runs))),
    }
    unmatched = row["n_unmatched"] > 0
    value_a = res_a.values.get(metric, np.nan) if unmatched else runs[0][metric]
    value_b = res_b.values.get(metric, np.nan) if unmatched else runs[1][metric]
    rep_a, rep_b = res_a.replicates.get(metric), res_b.replicates.get(metric)
    if np.isnan(runs[0][metric]) or np.isnan(runs[1][metric]):
        row["note"] = res_a.notes.get(metric) or res_b.notes.get(metric) or res_a.pixel_note or res_b.pixel_note \
            or "not measured: no value in metrics.json"
        return row
    if metric in PER_IMAGE:
        found = _per_image_pair(metric, resampled, draws)
        if isinstance(found, str):
            row["note"] = found
            return row
        value_a, value_b, rep_a, rep_b = found
    row.update(value_a=value_a, value_b=value_b, difference=value_a - value_b)
    if rep_a is None or rep_b is None:
        note = (res_a.pixel_note or res_b.pixel_note) if metric != "image_auroc" else \
            "the common test images hold one class only"
        row["note"] = f"not tested: {note}; `{retest_command(results)}` writes the maps" if "maps.npz" in note else \
            f"not tested: {note}"
        return row
    replicate_diff = rep_a - rep_b
    replicate_diff = replicate_diff[np.isfinite(replicate_diff)]  # a resample without the metric's images
    row["ci_low"], row["ci_high"] = percentile_interval(replicate_diff, CONFIDENCE)
    tie = _tie_note(value_a, value_b, replicate_diff, metric)
    if tie:
        row["note"] = tie
        return row
    if metric == "image_auroc":
        if min(row["n_defective"], row["n_images"] - row["n_defective"]) < MIN_PER_CLASS:
            row["note"] = (f"not tested: DeLong needs at least {MIN_PER_CLASS} normal and {MIN_PER_CLASS} defective "
                           "images")
            return row
        scores_a = load_scores(runs[0]["run_dir"]).set_index("path").loc[draws.paths, "score"].to_numpy(dtype=float)
        scores_b = load_scores(runs[1]["run_dir"]).set_index("path").loc[draws.paths, "score"].to_numpy(dtype=float)
        row["p_value"] = delong_test(scores_a, scores_b, draws.labels).p_value
    else:
        row["p_value"] = bootstrap_p_value(row["difference"], replicate_diff)
    return row


def per_category_tests(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]], draws: dict[str, CategoryDraws],
                       resamples: dict[str, RunResamples], results: str) -> pd.DataFrame:
    """One row per pair, category, seed run by both backbones and metric (those of CATEGORY_TESTED some run of the
    dataset measured): values, difference, bootstrap interval, p (DeLong for image AUROC, bootstrap z for the others)
    or the reason it is not tested."""
    index, rows = run_index(runs_frame), []
    tested = {dataset: measured_metrics(frame, CATEGORY_TESTED) for dataset, frame in runs_frame.groupby("dataset")}
    datasets = runs_frame.groupby("category")["dataset"].first().to_dict()
    for pair in pairs:
        for category in sorted(set(runs_frame["category"])):
            seeds = sorted({s for (bb, c, s) in index if bb == pair[0] and c == category}
                           & {s for (bb, c, s) in index if bb == pair[1] and c == category})
            for seed in seeds:
                runs = (index[(pair[0], category, seed)], index[(pair[1], category, seed)])
                resampled = (resamples[runs[0]["run_dir"]], resamples[runs[1]["run_dir"]])
                rows += [_test_row(pair, category, seed, metric, runs, resampled, draws[category], results)
                         for metric in tested[datasets[category]]]
    frame = pd.DataFrame(rows, columns=TEST_COLUMNS)
    for column in ("value_a", "value_b", "difference", "ci_low", "ci_high", "p_value", "p_bh"):
        frame[column] = frame[column].astype(float)
    return frame


# ----------------------------------------------------------------------------------------------------
# over categories: both answers (inference.py) for every pair, group and metric
# ----------------------------------------------------------------------------------------------------
def pair_cells(runs_frame: pd.DataFrame, pair: tuple[str, str], categories: list[str],
               metric: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The (category, seed) cells a − b both backbones ran with the metric measured, and the categories without
    one (with the reason)."""
    cells, excluded, _ = paired_cells(runs_frame, pair[0], pair[1], metric, ARM, categories)
    return cells, excluded


def answer_pair(runs_frame: pd.DataFrame, pair: tuple[str, str], dataset: str, group: str, categories: list[str],
                metric: str) -> dict[str, Any]:
    """One pair, dataset, group and metric answered: labels, inference.answer_columns and the unfinished flags."""
    frame = runs_frame[runs_frame["dataset"] == dataset]
    answers = compare_arms(frame, pair[0], pair[1], metric, ARM, categories)
    return answer_row(frame, pair, answers, (pair_label(pair), group, metric, dataset))


def answer_row(frame: pd.DataFrame, arms: Iterable[str], answers: Answers,
               labels: tuple[str, str, str, str]) -> dict[str, Any]:
    """A primary or aggregate table row: labels (pair, group, metric, dataset), inference.answer_columns and the
    unfinished flags of the arms' runs in the answered categories (shared by pair and interaction questions)."""
    members = frame[frame[ARM].isin(list(arms)) & frame["category"].isin(list(answers.differences.index))]
    label, group, metric, dataset = labels
    return {"pair": label, "group": group, "metric": metric, "dataset": dataset, **answer_columns(answers),
            "flags": unfinished_flags(members)}


def aggregate_tests(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per pair, dataset, group (then overall) and metric (those some run of the dataset measured): the mean over
    categories of the seed-averaged difference a − b and both answers (inference.py), the signed-rank check and the
    wins of each side."""
    measured = {dataset: measured_metrics(frame) for dataset, frame in runs_frame.groupby("dataset")}
    rows = [answer_pair(runs_frame, pair, dataset, group, categories, metric)
            for pair in pairs for dataset, group, categories in group_members(runs_frame)
            for metric in measured[dataset]]
    frame = pd.DataFrame(rows).reindex(columns=AGGREGATE_COLUMNS)
    for column in ("mean_diff", "ci_low_fixed", "ci_high_fixed", "p_fixed", "p_fixed_bh", "ci_low_new", "ci_high_new",
                   "p_new", "p_new_bh", "p_signed_rank", "min_reachable_p_signed_rank", "df_fixed", "df_new"):
        frame[column] = frame[column].astype(float)
    for column in ("note_fixed", "note_new", "note"):
        frame[column] = frame[column].fillna("")
    return frame


def category_intervals(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per pair, group, category and metric: the seed-averaged difference over the seeds both backbones ran and its
    t interval from that category's own seeds (test images fixed; none with one seed): the forest plots' points."""
    rows = []
    measured = {dataset: measured_metrics(frame) for dataset, frame in runs_frame.groupby("dataset")}
    for pair in pairs:
        for dataset, group, categories in group_members(runs_frame):
            if group == OVERALL:
                continue
            frame = runs_frame[runs_frame["dataset"] == dataset]
            for metric in measured[dataset]:
                cells, _ = pair_cells(frame, pair, categories, metric)
                for row in cell_intervals(cells).itertuples():
                    rows.append({"pair": pair_label(pair), "dataset": dataset, "group": group,
                                 "category": row.category, "metric": metric, "n_seeds": row.n_seeds,
                                 "difference": row.difference, "ci_low": row.ci_low, "ci_high": row.ci_high})
    return pd.DataFrame(rows, columns=["pair", "dataset", "group", "category", "metric", "n_seeds", "difference",
                                       "ci_low", "ci_high"])


def with_exploratory(tests: pd.DataFrame, aggregate: pd.DataFrame,
                     primary: Iterable[tuple[str, str, str]] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The exploratory family's correction: Benjamini-Hochberg within each table (the per-category tests; the tests
    over categories less the primary questions, ``(pair label, group, metric)``, which decision.py answers with
    Holm over the primary family alone), for each answer on its own. Returns both tables with ``p_bh`` (per
    category), ``p_fixed_bh``, ``p_new_bh`` and ``family`` filled in."""
    tests, aggregate = tests.copy(), aggregate.copy()
    tests["p_bh"] = benjamini_hochberg(tests["p_value"])
    keys = set(primary)
    is_primary = [(row.pair, row.group, row.metric) in keys for row in aggregate.itertuples()]
    aggregate["family"] = [PRIMARY if flag else EXPLORATORY for flag in is_primary]
    exploratory = aggregate["family"] == EXPLORATORY
    for answer in ("fixed", "new"):
        aggregate[f"p_{answer}_bh"] = benjamini_hochberg(aggregate[f"p_{answer}"].where(exploratory))
    return tests, aggregate


def per_defect_stats(runs_frame: pd.DataFrame, resamples: dict[str, RunResamples]) -> pd.DataFrame:
    """Per category, defect type, backbone and metric: mean over seeds of the metric on the good images plus that
    type's images, and how many seeds measured it."""
    rows = []
    for _, run in runs_frame.iterrows():
        for defect_type, values in resamples[run["run_dir"]].per_defect.items():
            for metric in PAIRED_METRICS:
                rows.append({"dataset": run["dataset"], "category": run["category"], "defect_type": defect_type,
                             "backbone": run["backbone"], "seed": run["seed"], "metric": metric,
                             "value": values.get(metric, np.nan), "unfinished": run["unfinished"]})
    columns = ["dataset", "category", "defect_type", "backbone", "metric"]
    if not rows:
        return pd.DataFrame(columns=[*columns, "mean", "n_seeds", "unfinished"])
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(columns, sort=True)
    return grouped["value"].agg(mean="mean", n_seeds="count").join(grouped["unfinished"].any()).reset_index()


# ----------------------------------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """The paired statistics of a report: per-category tests, tests over categories (both with the exploratory
    correction), intervals per category (forest plots), per-defect metrics, and per run the replicates and PRO
    curve. The primary family's answers are decision.py's (the same inference.py answers, Holm's correction)."""

    pairs: list[tuple[str, str]]
    tests: pd.DataFrame
    aggregate: pd.DataFrame
    intervals: pd.DataFrame
    per_defect: pd.DataFrame
    resamples: dict[str, RunResamples]
    n_boot: int


def compare_runs(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]], n_boot: int = N_BOOT,
                 results: str = "results", primary: Iterable[tuple[str, str, str]] = ()) -> Comparison:
    """Every paired statistic of ``pairs`` on the runs (which should hold the compared backbones only); the
    tests over categories named in ``primary`` ((pair label, group, metric)) are left out of the exploratory
    correction."""
    if n_boot < 2:
        raise RDError(f"--n-boot {n_boot}: expected at least 2 resamples (default {N_BOOT})")
    draws, resamples = compute_resamples(runs_frame, n_boot)
    tests = per_category_tests(runs_frame, pairs, draws, resamples, results)
    tests, aggregate = with_exploratory(tests, aggregate_tests(runs_frame, pairs), primary)
    return Comparison(pairs, tests, aggregate, category_intervals(runs_frame, pairs),
                      per_defect_stats(runs_frame, resamples), resamples, n_boot)
