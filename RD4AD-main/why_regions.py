"""Why instrument 2, "Small defects": every ground-truth region of the test masks (regions.csv, written by
``main.py test``: instruments.py) by size bin, its recall at the run's validation threshold and its overlap up to
the AUPRO's FPR limit, per backbone, and the paired differences per bin over the regions both backbones scored."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots import FigureItem, backbone_colors
from runs import REGIONS_FILE, load_regions
from why_part import WhyPart
from why_stats import CONFIDENCE, estimate_text, paired_values, per_pair, seed_interval, stack_pairs

__all__ = ["ADDED_BY", "BIN_EDGES", "BIN_LABELS", "KEY", "TITLE", "by_bin", "differences", "part", "region_frame",
           "size_bin"]

BIN_EDGES = (0.001, 0.01, 0.05)  # fractions of the image area; a region on an edge goes to the upper bin
BIN_LABELS = ("< 0.1 %", "0.1-1 %", "1-5 %", "> 5 %")
KEY = "regions"
TITLE = "Small defects"
ADDED_BY = ("`main.py test --results {results}` writes each run's regions.csv when the test data has ground-truth "
            "masks")
REGION_ID = ["category", "path", "region", "area_px"]  # the same region in every run of a category
VALUES = {"detected": "recall", "overlap_auc": "overlap"}  # regions.csv-derived column -> short name
WORDS = {"recall": "region recall", "overlap": "overlap to FPR 0.3"}


def size_bin(area_fraction: np.ndarray | pd.Series) -> np.ndarray:
    """The bin index (0-3) of each area fraction: [0, 0.1 %), [0.1 %, 1 %), [1 %, 5 %), [5 %, 100 %]."""
    return np.digitize(np.asarray(area_fraction, dtype=float), BIN_EDGES, right=False)


def region_frame(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Every run's regions with backbone, category, seed, bin and ``detected``: the region's highest map value
    exceeds the run's validation threshold (metrics.json; an image is flagged when its score, the map's maximum,
    exceeds it), i.e. this region alone would flag its image."""
    frames = []
    for row in runs_frame.itertuples(index=False):
        table = load_regions(row.run_dir)
        if table is not None and not table.empty:
            frames.append(table.assign(backbone=row.backbone, category=row.category, seed=row.seed,
                                       detected=(table["max_score"] > row.threshold).astype(float),
                                       bin=size_bin(table["area_fraction"])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _per_region(frame: pd.DataFrame) -> pd.DataFrame:
    """Per backbone and region: recall and overlap averaged over the seeds that scored it."""
    return frame.groupby(["backbone", *REGION_ID, "bin"], sort=False)[list(VALUES)].mean().reset_index()


def by_bin(frame: pd.DataFrame) -> pd.DataFrame:
    """Per backbone and bin: distinct regions, region recall and mean overlap (fractions; seed-mean per region)."""
    regions = _per_region(frame)
    table = regions.groupby(["backbone", "bin"]).agg(regions=("path", "size"), recall=("detected", "mean"),
                                                     overlap=("overlap_auc", "mean")).reset_index()
    return table.assign(size=table["bin"].map(dict(enumerate(BIN_LABELS))))


def differences(frame: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Per bin, the mean over the regions both backbones scored (on the (category, seed) runs both have; seed-mean
    per region) of a - b in recall and overlap, with the t intervals of why_stats.seed_interval: seeds and regions
    random (each category a seeds x regions table), categories fixed, each category weighted by its regions. A
    region enters when both backbones scored it on every seed both ran in its category. Columns: bin, size,
    n_regions, n_categories, n_seeds (the fewest of a category), then per value ``<value>_diff``, ``_ci_low``,
    ``_ci_high``, ``_df`` (fractions), and note."""
    members = frame[frame["backbone"].isin(pair)]
    if members.empty:
        return pd.DataFrame()
    members = members.assign(unit=members.groupby(REGION_ID, sort=False).ngroup())
    (units, _), cube = paired_values(members, pair, ["unit", "seed"], list(VALUES))  # units x seeds x (a, b) x 2
    diff = cube[:, :, 0] - cube[:, :, 1]
    scored = np.isfinite(cube[..., 0])  # units x seeds x (a, b): the run scored the region
    first = members.drop_duplicates("unit").set_index("unit").loc[units]
    unit_category, unit_bin = first["category"].to_numpy(), first["bin"].to_numpy()
    ran = {c: scored[unit_category == c].any(0).all(-1) for c in set(unit_category)}  # seeds both backbones ran
    rows = []
    for index, label in enumerate(BIN_LABELS):
        cells = []
        for category in sorted(set(unit_category[unit_bin == index])):
            table = diff[(unit_bin == index) & (unit_category == category)][:, ran[category]]  # regions x seeds x 2
            table = table[np.isfinite(table).all(axis=(1, 2))]  # the regions both scored on every seed
            if len(table):
                cells.append(table.transpose(1, 0, 2))  # seeds x regions x values
        if not cells:
            continue
        n_regions = np.array([table.shape[1] for table in cells])
        found = seed_interval(cells, n_regions / n_regions.sum(), bounds=(-1.0, 1.0))
        row = {"bin": index, "size": label, "n_regions": int(n_regions.sum()), "n_categories": len(cells),
               "n_seeds": min(table.shape[0] for table in cells)}
        for column, name in enumerate(VALUES.values()):
            row |= {f"{name}_diff": found.estimate[column], f"{name}_ci_low": found.low[column],
                    f"{name}_ci_high": found.high[column], f"{name}_df": found.df[column]}
        rows.append(row | {"note": found.note})
    return pd.DataFrame(rows)


def _figure(table: pd.DataFrame) -> Figure:
    """Recall and overlap per size bin, one bar per backbone, each labelled with its number of regions."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    backbones = list(dict.fromkeys(table["backbone"]))
    colors, width = backbone_colors(backbones), 0.8 / len(backbones)
    for ax, (column, title) in zip(axes, (("recall", "region recall at the validation threshold"),
                                          ("overlap", "mean overlap up to FPR 0.3"))):
        for index, backbone in enumerate(backbones):
            rows = table[table["backbone"] == backbone].set_index("bin").reindex(range(len(BIN_LABELS)))
            bars = ax.bar(np.arange(len(BIN_LABELS)) + index * width, 100 * rows[column].to_numpy(), width,
                          label=backbone, color=colors[backbone])
            ax.bar_label(bars, labels=[f"n={int(n)}" if np.isfinite(n) else "" for n in rows["regions"]],
                         fontsize="x-small")
        ax.set_xticks(np.arange(len(BIN_LABELS)) + width * (len(backbones) - 1) / 2, BIN_LABELS)
        ax.set(xlabel="region area (fraction of the image)", ylabel="%", title=title)
    axes[0].legend(fontsize="small")
    return fig


def _text(row: pd.Series, name: str) -> str:
    return estimate_text(row[f"{name}_diff"], row[f"{name}_ci_low"], row[f"{name}_ci_high"], row["note"])


def _finding(diffs: dict[tuple[str, str], pd.DataFrame]) -> str | None:
    """The smallest bin with regions common to the first pair: its recall and overlap differences."""
    for pair, table in diffs.items():
        row = table.iloc[0]
        values = "; ".join(f"{WORDS[name]} {_text(row, name)} points" for name in VALUES.values())
        return (f"In the smallest size bin with regions ({row['size']} of the image area, {int(row['n_regions'])} "
                f"regions in {int(row['n_categories'])} categories scored by both), {pair[0]} − {pair[1]}: {values} "
                f"({100 * CONFIDENCE:.0f} % t intervals, training seeds and regions random, categories fixed).")
    return None


def part(runs_frame: pd.DataFrame, results: str, pairs: list[tuple[str, str]]) -> WhyPart | None:
    """The "Small defects" part, or None when no run has regions.csv with a region."""
    frame = region_frame(runs_frame)
    if frame.empty:
        return None
    table = by_bin(frame)
    diffs = per_pair(frame, pairs, differences)
    shown = table.assign(**{"region recall (%)": (100 * table["recall"]).round(1),
                            "overlap to FPR 0.3 (%)": (100 * table["overlap"]).round(1)})
    shown = shown[["backbone", "size", "regions", "region recall (%)", "overlap to FPR 0.3 (%)"]]
    both, diff_table = stack_pairs(diffs), pd.DataFrame()
    if not both.empty:
        columns = [f"{name}_{stat}" for name in VALUES.values() for stat in ("diff", "ci_low", "ci_high")]
        diff_table = both[["pair", "size", "n_regions", "n_categories", "n_seeds", *columns]].assign(
            **{c: (100 * both[c]).round(2) for c in columns})
    sizes = ", ".join(f"{label}" for label in BIN_LABELS)
    text = (f"Each run's {REGIONS_FILE} (written by `main.py test` from its maps and masks, at the training image "
            "size) lists every ground-truth region: an 8-connected component of a test mask (scipy.ndimage.label). "
            f"Regions go into fixed bins of their area as a fraction of the image area ({sizes}; a region on an "
            "edge goes to the upper bin). **Region recall**: the share of regions whose highest anomaly-map value "
            "exceeds the run's validation threshold (metrics.json, from held-out normal images only); the image "
            "score is the map's maximum, so such a region alone would flag its image. **Overlap to FPR 0.3**: the "
            "region's PRO curve (the share of its pixels at or above each threshold, against the false-positive "
            "rate over all normal pixels of the run's test images, as in the AUPRO) integrated up to FPR 0.3 and "
            "divided by 0.3; its mean over all regions is the run's AUPRO. Per backbone, each region's values are "
            "averaged over seeds, then over the regions of a bin. The differences a − b (points) use the regions "
            "both backbones scored on every (category, seed) run both have (same test images, same masks), each "
            "region's difference averaged over seeds, then over the bin's regions. Their 95 % Student t intervals "
            "take the **training seeds and the regions as random** and the categories as fixed: per category the "
            "differences form a seeds x regions table whose variance has a seed part (a run's threshold moves all "
            "its regions together), a region part and a residual, each category with its own (a category with one "
            "seed takes the seed part of the others), and the degrees of freedom are Satterthwaite's (3 seeds give "
            "a category's seed part 2). With one seed per category the seed part cannot be estimated and there is "
            "no interval. Coverage checked by "
            "simulation (docs/calibration.md).")
    figure = FigureItem(kind="why", name="why_regions", caption="Region recall at the validation threshold and mean "
                        "overlap up to FPR 0.3 per region-size bin, per backbone (n: regions).", figure=_figure(table))
    tables = {"by_bin": shown} | ({"differences": diff_table} if not diff_table.empty else {})
    finding = _finding(diffs) or "No pair has regions scored by both backbones."
    return WhyPart(KEY, TITLE, text, tables, [figure], finding)
