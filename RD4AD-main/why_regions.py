"""Why instrument 2, "Small defects": every ground-truth region of the test masks (regions.csv, written by
``main.py test``: instruments.py) by size bin, its recall at the run's validation threshold and its overlap up to
the AUPRO's FPR limit, per backbone, and the paired differences per bin over the regions both backbones scored."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots import FigureItem, backbone_colors
from runs import REGIONS_FILE, load_regions
from significance import multiplicities, percentile_interval, seeded_rng
from why_part import WhyPart
from why_stats import CONFIDENCE, N_BOOT, interval, per_pair, stack_pairs

__all__ = ["BIN_EDGES", "BIN_LABELS", "by_bin", "differences", "part", "region_frame", "size_bin"]

BIN_EDGES = (0.001, 0.01, 0.05)  # fractions of the image area; a region on an edge goes to the upper bin
BIN_LABELS = ("< 0.1 %", "0.1-1 %", "1-5 %", "> 5 %")
KEY = "regions"
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


def differences(frame: pd.DataFrame, pair: tuple[str, str], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per bin, the mean over the regions both backbones scored (on the (category, seed) runs both have; seed-mean
    per region) of a - b in recall and overlap, with percentile intervals from a paired bootstrap over those
    regions (one draw per bin for both values). Columns: bin, size, n_regions, then mean_diff, ci_low, ci_high per
    value (fractions); the replicates in ``_replicates_<value>``."""
    runs_of = {b: set(map(tuple, frame.loc[frame["backbone"] == b, ["category", "seed"]].drop_duplicates().values))
               for b in pair}
    common = runs_of[pair[0]] & runs_of[pair[1]]
    if not common:
        return pd.DataFrame()
    keep = [(c, s) in common for c, s in zip(frame["category"], frame["seed"])]
    regions = _per_region(frame[keep])
    wide = regions.pivot_table(index=[*REGION_ID, "bin"], columns="backbone", values=list(VALUES)).dropna()
    rows = []
    for index, label in enumerate(BIN_LABELS):
        members = wide[wide.index.get_level_values("bin") == index]
        if members.empty:
            continue
        diff = np.stack([(members[(v, pair[0])] - members[(v, pair[1])]).to_numpy() for v in VALUES], axis=1)
        weights = multiplicities(len(diff), n_boot, seeded_rng("why", KEY, *pair, index))
        replicates = weights @ diff / len(diff)
        row = {"bin": index, "size": label, "n_regions": len(diff)}
        for column, name in enumerate(VALUES.values()):
            low, high = percentile_interval(replicates[:, column], CONFIDENCE)
            row |= {f"{name}_diff": diff[:, column].mean(), f"{name}_ci_low": low, f"{name}_ci_high": high,
                    f"_replicates_{name}": replicates[:, column]}
        rows.append(row)
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


def _finding(diffs: dict[tuple[str, str], pd.DataFrame]) -> str | None:
    """The smallest bin with regions common to the first pair: its recall and overlap differences."""
    for pair, table in diffs.items():
        row = table.iloc[0]
        values = "; ".join(f"{WORDS[name]} {interval(row[f'{name}_diff'], row[f'_replicates_{name}'])} points"
                           for name in VALUES.values())
        return (f"In the smallest size bin with regions ({row['size']} of the image area, {int(row['n_regions'])} "
                f"regions scored by both), {pair[0]} − {pair[1]}: {values} (95 % intervals, regions resampled).")
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
        diff_table = both[["pair", "size", "n_regions", *columns]].assign(**{c: (100 * both[c]).round(2)
                                                                           for c in columns})
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
            "both backbones scored on the same (category, seed) runs (same test images, same masks), with 95 % "
            f"percentile intervals from a paired bootstrap over those regions ({N_BOOT} resamples per bin).")
    figure = FigureItem(kind="why", name="why_regions", caption="Region recall at the validation threshold and mean "
                        "overlap up to FPR 0.3 per region-size bin, per backbone (n: regions).", figure=_figure(table))
    tables = {"by_bin": shown} | ({"differences": diff_table} if not diff_table.empty else {})
    finding = _finding(diffs) or "No pair has regions scored by both backbones."
    return WhyPart(KEY, "Small defects", text, tables, [figure], finding)
