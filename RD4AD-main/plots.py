"""The comparison report's figures, drawn from results files only.

Each function returns a matplotlib Figure built without pyplot (no global state, nothing leaks in a
long notebook, no display needed: PNGs go through Agg); ``make_figures`` collects them and
``save_figures`` writes the PNGs. Images come from PIL in RGB; anomaly maps use 'jet' so that high
anomaly is warm (red). Backbones are coloured by their registry family (one hue per family, shades
within it), the same in every figure.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from comparison import DEFAULT_PRIMARY_METRICS, PAIRED_METRICS, backbone_family, retest_command
from metrics import image_auroc, roc_curve
from runs import MAPS_FILE, METRICS, atomic_write, load_maps, load_scores, read_history

__all__ = ["FigureItem", "PER_CATEGORY_FIGURES", "ProCurves", "backbone_colors", "bars_figure", "category_colors",
           "extremes_figure", "forest_figure", "gallery_figure", "histogram_figure", "history_figure", "make_figures",
           "pro_figure", "roc_figure", "save_figures", "show", "skipped_figures"]

ProCurves = dict[str, tuple[np.ndarray, np.ndarray]]  # run_dir -> (FPR, PRO) up to just past PRO_FPR_LIMIT

MAP_COLORMAP = "jet"  # blue = normal, red = anomalous
PRO_FPR_LIMIT = 0.3
LINE_STYLES = ("-", "--", ":", "-.")
SECTIONS = {
    "forest": "Forest plots: per-category differences and the group means",
    "bars": "Per-category results with error bars",
    "roc": "ROC curves (image level)",
    "pro": f"PRO curves up to FPR {PRO_FPR_LIMIT}",
    "hist": "Score histograms with the validation threshold",
    "gallery": "Anomaly maps of the same test images, backbones side by side",
    "extremes": "Lowest-scored defects and highest-scored normals",
    "why": "What differs between the teachers",
}
BAR_METRICS = ("image_auroc", "pixel_auroc", "aupro")
UNMAPPED_SHAPE = (128, 128)  # display size of images shown without an anomaly map
PNG_COMPRESSION = 1  # zlib level: 15 % less writing time than the default 6 for 8 % larger files
IMAGE_INTERPOLATION = "nearest"  # images are drawn near their own size: smoothing would only cost time


@dataclass
class FigureItem:
    """One figure of the report (or, with ``figure`` None, the note saying why it was skipped)."""

    kind: str
    name: str
    caption: str
    figure: Figure | None
    note: str = ""  # what is missing from a drawn figure (e.g. runs without maps.npz)

    @property
    def section(self) -> str:
        return SECTIONS[self.kind]


FAMILY_ORDER = ("resnet", "convnext", "swin")  # the registry's families first, in this order; others after


def category_colors(categories: list[str]) -> dict[str, str]:
    """One colour per category (tab10, then tab20's light shades), fixed by the sorted names."""
    palette = [f"C{i}" for i in range(10)] + [to_hex(color) for color in matplotlib.colormaps["tab20"].colors[1::2]]
    return {category: palette[index % len(palette)] for index, category in enumerate(sorted(categories))}


def backbone_colors(backbones: list[str]) -> dict[str, tuple]:
    """A fixed colour per backbone: one tab10 hue per registry family, darker to lighter shades within it."""
    palette = matplotlib.colormaps["tab10"]
    families = sorted({backbone_family(name) for name in backbones},
                      key=lambda f: (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER), f))
    colors = {}
    for index, family in enumerate(families):
        members = sorted(name for name in backbones if backbone_family(name) == family)
        base = np.array(palette(index % 10)[:3])
        for rank, name in enumerate(members):
            shade = 0.0 if len(members) == 1 else -0.35 + 0.7 * rank / (len(members) - 1)
            mixed = base + (1.0 - base) * shade if shade > 0 else base * (1.0 + shade)
            colors[name] = (*np.clip(mixed, 0, 1), 1.0)
    return colors


def _label(backbone: str) -> str:
    return f"{backbone} ({backbone_family(backbone)})"


def _runs_of(runs_frame: pd.DataFrame, category: str) -> pd.DataFrame:
    return runs_frame[runs_frame["category"] == category].sort_values(["backbone", "seed"])


def _has_maps_file(row: pd.Series) -> bool:
    return (Path(row["run_dir"]) / MAPS_FILE).is_file()


def _has_masks(row: pd.Series) -> bool:
    """Pixel metrics were measured and the maps were saved (the file is not read)."""
    return not np.isnan(row["aupro"]) and _has_maps_file(row)


def shown_seed(runs_frame: pd.DataFrame, category: str, need_maps: bool = False) -> int | None:
    """The smallest seed run by every backbone of the category (with maps if asked), else None."""
    frame = _runs_of(runs_frame, category)
    if need_maps:
        frame = frame[[_has_masks(row) for _, row in frame.iterrows()]]
    per_backbone = [set(group["seed"]) for _, group in frame.groupby("backbone")]
    common = set.intersection(*per_backbone) if per_backbone else set()
    everyone = len(per_backbone) == _runs_of(runs_frame, category)["backbone"].nunique()
    return min(common) if common and everyone else None


def _run(runs_frame: pd.DataFrame, category: str, backbone: str, seed: int) -> pd.Series:
    frame = runs_frame
    return frame[(frame["category"] == category) & (frame["backbone"] == backbone) & (frame["seed"] == seed)].iloc[0]


# ----------------------------------------------------------------------------------------------
# Curves and bars
# ----------------------------------------------------------------------------------------------


def roc_figure(runs_frame: pd.DataFrame, category: str) -> Figure:
    """Image-level ROC curves of one category: a colour per backbone, a line style per seed."""
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = backbone_colors(list(runs_frame["backbone"].unique()))
    for backbone, group in _runs_of(runs_frame, category).groupby("backbone"):
        for index, row in enumerate(group.itertuples()):
            scores = load_scores(row.run_dir)
            values, labels = scores["score"].to_numpy(copy=True), scores["label"].to_numpy(copy=True)
            fpr, tpr, _ = roc_curve(values, labels)
            auroc = image_auroc(values, labels)
            ax.plot(fpr, tpr, color=colors[backbone], linestyle=LINE_STYLES[index % 4],
                    label=f"{_label(backbone)}, seed {row.seed} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate (normal images flagged)",
           ylabel="true positive rate (defective images found)", title=f"Image-level ROC, {category}")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def pro_figure(runs_frame: pd.DataFrame, category: str, curves: ProCurves) -> Figure | None:
    """PRO curves up to FPR 0.3 (from the comparison's per-run statistics, no second sort of the pixels);
    None when no run of the category has them (no masks, or no maps.npz)."""
    rows = [row for _, row in _runs_of(runs_frame, category).iterrows() if row["run_dir"] in curves]
    if not rows:
        return None
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = backbone_colors(list(runs_frame["backbone"].unique()))
    seed_index = {seed: index for index, seed in enumerate(sorted(set(runs_frame["seed"])))}
    for row in rows:
        fpr, pro = curves[row["run_dir"]]
        ax.plot(fpr, pro, color=colors[row["backbone"]], linestyle=LINE_STYLES[seed_index[row["seed"]] % 4],
                label=f"{_label(row['backbone'])}, seed {row['seed']} (AUPRO {row['aupro']:.3f})")
    ax.set(xlim=(0, PRO_FPR_LIMIT), ylim=(0, 1.02), xlabel="false positive rate (normal pixels)",
           ylabel="per-region overlap (PRO)", title=f"PRO curve up to FPR {PRO_FPR_LIMIT}, {category}")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def forest_figure(intervals: pd.DataFrame, aggregate: pd.DataFrame, pair: str, metric: str) -> Figure | None:
    """Per-category seed-averaged differences a - b with their seed-to-seed t intervals and a diamond per group
    mean (its "on these categories" interval); percentage points."""
    points = intervals[(intervals["pair"] == pair) & (intervals["metric"] == metric)]
    groups = aggregate[(aggregate["pair"] == pair) & (aggregate["metric"] == metric)]
    if points.empty and groups["mean_diff"].isna().all():
        return None
    one_dataset = groups["dataset"].nunique() == 1
    fig = Figure(figsize=(8.5, 1.6 + 0.32 * (len(points) + 1.5 * len(groups))), layout="constrained")
    ax = fig.subplots()
    palette = matplotlib.colormaps["tab10"]
    labels, ys, y = [], [], 0.0
    for index, mean in enumerate(groups.itertuples()):
        color = "black" if mean.group == "overall" else palette(index % 10)
        for row in points[(points["dataset"] == mean.dataset) & (points["group"] == mean.group)].itertuples():
            ax.errorbar(row.difference * 100, y, xerr=_error_bar(row), fmt="o", color=color, capsize=3)
            labels.append(f"{row.category} ({row.n_seeds} seed{'s' if row.n_seeds > 1 else ''})")
            ys.append(y)
            y -= 1
        name = mean.group if one_dataset else f"{mean.dataset} {mean.group}"
        count = int(mean.n_categories)
        if np.isnan(mean.mean_diff):
            labels.append(f"{name}: no mean (no category has a cell of both backbones)")
        else:
            _diamond(ax, mean, y, color)
            labels.append(f"{name} mean ({count} categor{'y' if count == 1 else 'ies'})")
        ys.append(y)
        y -= 1.5
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    a, b = pair.split(" vs ")
    ax.set(yticks=ys, yticklabels=labels,
           xlabel=f"{a} − {b}, percentage points\n(right of 0: {a} higher; left: {b} higher)",
           title=f"{PAIRED_METRICS[metric]}, {a} − {b}\nper category (mean over seeds) and group means, "
                 "95% intervals")
    return fig


def _error_bar(row) -> np.ndarray | None:
    if np.isnan(row.ci_low):
        return None
    return np.array([[max(row.difference - row.ci_low, 0) * 100], [max(row.ci_high - row.difference, 0) * 100]])


def _diamond(ax: Axes, row, y: float, color) -> None:
    """A group mean: a diamond spanning its interval (a plain marker when it has none)."""
    centre = row.mean_diff * 100
    if np.isnan(row.ci_low_fixed):
        ax.plot(centre, y, marker="D", color=color)
        return
    low, high = row.ci_low_fixed * 100, row.ci_high_fixed * 100
    ax.fill([low, centre, high, centre], [y, y + 0.3, y, y - 0.3], color=color, alpha=0.85)


def bars_figure(runs_frame: pd.DataFrame) -> Figure:
    """Per-category grouped bars (a bar per backbone) of the main metrics, error bars = std over seeds."""
    categories = sorted(set(runs_frame["category"]))
    backbones = sorted(set(runs_frame["backbone"]))
    colors = backbone_colors(backbones)
    width = 0.8 / len(backbones)
    fig = Figure(figsize=(max(7, 2.2 * len(categories)) * len(BAR_METRICS) / 2, 4.5), layout="constrained")
    axes = fig.subplots(1, len(BAR_METRICS), squeeze=False)[0]
    stats = runs_frame.groupby(["category", "backbone"])[list(BAR_METRICS)].agg(["mean", "std"]) * 100
    x = np.arange(len(categories))
    for ax, metric in zip(axes, BAR_METRICS):
        measured = stats[(metric, "mean")].dropna()
        low = (measured - stats[(metric, "std")].fillna(0)).min() if not measured.empty else 100
        bottom = max(0, np.floor(low / 5) * 5 - 5)
        for index, backbone in enumerate(backbones):
            rows = stats.reindex(pd.MultiIndex.from_product([categories, [backbone]]))
            means, stds = rows[(metric, "mean")].to_numpy(), rows[(metric, "std")].to_numpy()
            positions = x + (index - (len(backbones) - 1) / 2) * width
            ax.bar(positions, np.nan_to_num(means), width, yerr=stds, capsize=3, color=colors[backbone],
                   label=_label(backbone))
            for position in positions[np.isnan(means)]:
                ax.text(position, bottom + 1, "n/a", ha="center", va="bottom", fontsize="small", rotation=90)
        ax.set(ylim=(bottom, 101), xticks=x, xticklabels=categories,
               ylabel=f"{METRICS[metric]} (%)", title=METRICS[metric], xlabel="category")
        ax.tick_params(axis="x", rotation=30)
    fig.legend(*axes[0].get_legend_handles_labels(), title="backbone (family)", loc="outside right upper",
               fontsize="small")
    fig.suptitle("Per-category mean over seeds; error bars: std over seeds (none with one seed)")
    return fig


def histogram_figure(runs_frame: pd.DataFrame, category: str) -> Figure:
    """Normal vs defective test-image scores per backbone (rows) and seed (columns), with the threshold."""
    frame = _runs_of(runs_frame, category)
    backbones, seeds = sorted(set(frame["backbone"])), sorted(set(frame["seed"]))
    fig = Figure(figsize=(4.2 * len(seeds), 3.2 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), len(seeds), squeeze=False)
    for i, backbone in enumerate(backbones):
        for j, seed in enumerate(seeds):
            ax = axes[i][j]
            match = frame[(frame["backbone"] == backbone) & (frame["seed"] == seed)]
            if match.empty:
                ax.set_axis_off()
                continue
            row = match.iloc[0]
            scores = load_scores(row["run_dir"])
            threshold = row["threshold"]
            measured = np.isfinite(threshold)
            values = np.append(scores["score"], threshold) if measured else scores["score"].to_numpy()
            bins = np.histogram_bin_edges(values, bins=20)
            for label, name, color in ((0, "normal", "tab:blue"), (1, "defective", "tab:red")):
                ax.hist(scores.loc[scores["label"] == label, "score"], bins=bins, alpha=0.6, color=color, label=name,
                        histtype="stepfilled")  # one polygon per histogram: a fraction of the bars' drawing time
            if measured:
                ax.axvline(threshold, color="black", linestyle="--", label="validation threshold")
            ax.set(title=f"{_label(backbone)}, seed {seed}\nthreshold {threshold:.3g}" if measured else
                   f"{_label(backbone)}, seed {seed}\nno threshold", xlabel="image anomaly score", ylabel="test images")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.get_legend_handles_labels()[0]),
                           ([], []))
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")  # one legend, not one per panel
    fig.suptitle(f"Test-image scores, {category} (threshold from validation normals only)")
    return fig


def history_figure(run_directories: list[str | os.PathLike]) -> Figure:
    """Learning curves: training loss and held-out validation loss per epoch, one colour per run.

    A flat validation curve that rises while the training loss falls is over-fitting; the last
    epoch's weights are the model whatever the curve shows (no selection on any test data).
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    palette = matplotlib.colormaps["tab10"]
    for index, directory in enumerate(run_directories):
        directory = Path(directory)
        history = read_history(directory)
        if history is None:
            continue
        label = "/".join(directory.parts[-3:])
        color = palette(index % 10)
        ax.plot(history["epoch"], history["loss"], color=color, marker="o", markersize=3, label=f"{label} train")
        ax.plot(history["epoch"], history["val_loss"], color=color, linestyle="--", label=f"{label} validation")
    ax.set(xlabel="epoch", ylabel="distillation loss (sum over 3 scales of 1 - cos)",
           title="Learning curves (solid: training batches; dashed: held-out validation normals)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="x-small")
    return fig


# ----------------------------------------------------------------------------------------------
# Images and anomaly maps
# ----------------------------------------------------------------------------------------------


def resolve_image(path: str, row: pd.Series) -> Path | None:
    """The image file of a scores.csv path, which may be relative to where training ran.

    Tried in turn: as written (from here), from each folder above the run directory (the results
    folder usually sits in the project root), then under the run's data root and its category.
    """
    ancestors = [folder / path for folder in Path(row["run_dir"]).resolve().parents]
    data_root = Path(row["data_root"])
    for candidate in (Path(path), *ancestors, data_root / path, data_root / row["category"] / path):
        if candidate.is_file():
            return candidate
    return None


def load_rgb(path: str, row: pd.Series, shape: tuple[int, int]) -> np.ndarray | None:
    """A test image as RGB floats in [0, 1] at the map's (H, W), or None when not on disk."""
    found = resolve_image(path, row)
    if found is None:
        return None
    with Image.open(found) as image:
        rgb = image.convert("RGB").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _show_image(ax: Axes, rgb: np.ndarray | None, shape: tuple[int, int]) -> None:
    if rgb is None:
        ax.imshow(np.full((*shape, 3), 0.5), interpolation=IMAGE_INTERPOLATION)
        ax.text(0.5, 0.5, "image file\nnot found", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.imshow(rgb, interpolation=IMAGE_INTERPOLATION)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Axes, rgb: np.ndarray | None, anomaly: np.ndarray, limits: tuple[float, float]) -> ScalarMappable:
    """The image with its anomaly map on top (jet at half opacity, blended here into one RGB image, which draws in
    half the time of two layers); returns the map's colour scale for a colour bar."""
    scale = ScalarMappable(Normalize(*limits), matplotlib.colormaps[MAP_COLORMAP])
    colored = scale.to_rgba(anomaly.astype(np.float32), bytes=True)[..., :3]
    background = (rgb * 255.0).astype(np.uint8) if rgb is not None else np.full_like(colored, 128)
    blended = ((background.astype(np.uint16) + colored) // 2).astype(np.uint8)  # uint8: a figure holds many images
    _show_image(ax, blended, anomaly.shape)
    if rgb is None:
        ax.text(0.5, 0.5, "image file\nnot found", transform=ax.transAxes, ha="center", va="center")
    return scale


def _map_lookup(data: dict[str, np.ndarray]) -> dict[str, int]:
    return {str(path): index for index, path in enumerate(data["paths"])}


def _limits(run_dir: str) -> tuple[float, float]:
    """One colour scale per run: the range of all its test maps, so images compare within a column."""
    path = Path(run_dir) / MAPS_FILE
    return _maps_range(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=256)
def _maps_range(path: str, mtime_ns: int) -> tuple[float, float]:
    """(min, max) of a maps.npz, computed once per file version (a full pass over the maps)."""
    maps = load_maps(Path(path).parent)["maps"]
    return float(maps.min()), float(maps.max())


def gallery_images(scores: pd.DataFrame, common: set[str], count: int) -> pd.DataFrame:
    """Which test images to show: the first of each defect type (sorted paths), then a normal one."""
    pool = scores[scores["path"].isin(common)].sort_values("path")
    defects = pool[pool["label"] == 1].groupby("defect_type", sort=True).head(1).head(count - 1)
    normal = pool[pool["label"] == 0].head(count - len(defects))
    return pd.concat([defects, normal], ignore_index=True)


def gallery_figure(runs_frame: pd.DataFrame, category: str, count: int = 4) -> Figure | None:
    """The same test images for every backbone: image, ground truth, then each backbone's map overlay."""
    seed = shown_seed(runs_frame, category, need_maps=True)
    if seed is None:
        return None
    backbones = sorted(set(_runs_of(runs_frame, category)["backbone"]))
    rows = {backbone: _run(runs_frame, category, backbone, seed) for backbone in backbones}
    data = {backbone: load_maps(row["run_dir"]) for backbone, row in rows.items()}
    common = set.intersection(*(set(map(str, d["paths"])) for d in data.values()))
    scores = {backbone: load_scores(row["run_dir"]).set_index("path") for backbone, row in rows.items()}
    chosen = gallery_images(scores[backbones[0]].reset_index(), common, count)
    if chosen.empty:
        return None
    fig = Figure(figsize=(3.3 * (2 + len(backbones)), 3.0 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 2 + len(backbones), squeeze=False)
    first = data[backbones[0]]
    limits = {backbone: _limits(row["run_dir"]) for backbone, row in rows.items()}
    lookups = {backbone: _map_lookup(run_maps) for backbone, run_maps in data.items()}
    for i, image in enumerate(chosen.itertuples()):
        index = lookups[backbones[0]][image.path]
        rgb = load_rgb(image.path, rows[backbones[0]], first["maps"].shape[1:])
        _show_image(axes[i][0], rgb, first["maps"].shape[1:])
        axes[i][0].set(title="image", ylabel=f"{image.defect_type}\n{Path(image.path).name}")
        axes[i][1].imshow(first["masks"][index], cmap="gray", vmin=0, vmax=1, interpolation=IMAGE_INTERPOLATION)
        axes[i][1].set(title="ground truth (white = defect)", xticks=[], yticks=[])
        for j, backbone in enumerate(backbones):
            ax, run_maps = axes[i][2 + j], data[backbone]
            artist = _overlay(ax, rgb, run_maps["maps"][lookups[backbone][image.path]], limits[backbone])
            ax.set_title(f"{_label(backbone)}\nimage score {scores[backbone].at[image.path, 'score']:.3g}")
            if i == len(chosen) - 1:  # one colour bar per backbone column (its scale is the same in every row)
                fig.colorbar(artist, ax=list(axes[:, 2 + j]), fraction=0.046, pad=0.02, label="anomaly score",
                             location="bottom")
    fig.suptitle(f"Anomaly maps, {category}, seed {seed} (red = more anomalous; one colour scale per backbone)")
    return fig


def extremes_figure(runs_frame: pd.DataFrame, category: str, count: int = 3) -> Figure | None:
    """Per backbone: its lowest-scored defective images and its highest-scored normal images."""
    seed = shown_seed(runs_frame, category)
    if seed is None:
        return None
    backbones = sorted(set(_runs_of(runs_frame, category)["backbone"]))
    fig = Figure(figsize=(3.4 * count + 1, 2.9 * 2 * len(backbones)), layout="constrained")
    axes = fig.subplots(2 * len(backbones), count, squeeze=False)
    for b, backbone in enumerate(backbones):
        row = _run(runs_frame, category, backbone, seed)
        scores = load_scores(row["run_dir"])
        worst = scores[scores["label"] == 1].sort_values(["score", "path"]).head(count)
        alarms = scores[scores["label"] == 0].sort_values(["score", "path"], ascending=[False, True]).head(count)
        for r, (title, images) in enumerate((("lowest-scored defects", worst), ("highest-scored normals", alarms))):
            _extremes_row(fig, axes[2 * b + r], row, images, f"{backbone}\n{title}")
    with_maps = any(load_maps(_run(runs_frame, category, b, seed)["run_dir"]) is not None for b in backbones)
    legend = "maps: red = more anomalous" if with_maps else "no anomaly maps saved: images only"
    fig.suptitle(f"Hardest test images, {category}, seed {seed} ({legend})")
    return fig


def _extremes_row(fig: Figure, axes: np.ndarray, row: pd.Series, images: pd.DataFrame, label: str) -> None:
    """One row of the extremes figure: images with their map overlay (when saved) and verdict."""
    data = load_maps(row["run_dir"])
    lookup = _map_lookup(data) if data is not None else {}
    limits = _limits(row["run_dir"]) if data is not None else (0.0, 1.0)
    artist = None
    for ax, image in zip(axes, images.itertuples()):
        flagged = image.score > row["threshold"]  # metrics.py's rule: anomalous when above the threshold
        verdict = ("found" if flagged else "missed") if image.label == 1 else ("false alarm" if flagged else "passed")
        if image.path in lookup:
            anomaly = data["maps"][lookup[image.path]]
            artist = _overlay(ax, load_rgb(image.path, row, anomaly.shape), anomaly, limits)
        else:  # no maps saved for this image: the image alone
            _show_image(ax, load_rgb(image.path, row, UNMAPPED_SHAPE), UNMAPPED_SHAPE)
        ax.set_title(f"{image.defect_type}: score {image.score:.3g}\n{verdict} (threshold {row['threshold']:.3g})",
                     fontsize="small")
    for ax in axes[len(images):]:
        ax.set_axis_off()
    axes[0].set_ylabel(label)
    if artist is not None:
        fig.colorbar(artist, ax=list(axes), fraction=0.046, pad=0.02, label="anomaly score")


# ----------------------------------------------------------------------------------------------
# Collecting and saving
# ----------------------------------------------------------------------------------------------


# Per-category figures: (kind, drawing function, caption); when the function returns None, the caption
# of ``_skip_caption`` says why and what would produce the figure.
PER_CATEGORY_FIGURES: tuple[tuple[str, Callable, str], ...] = (
    ("roc", roc_figure, "Image-level ROC curves, {c}."),
    ("pro", pro_figure, "PRO curves, {c}."),
    ("hist", histogram_figure, "Score histograms, {c}."),
    ("gallery", gallery_figure, "Anomaly-map gallery, {c}."),
    ("extremes", extremes_figure, "Lowest-scored defects and highest-scored normals, {c}."),
)
NEEDS_MAPS = {"pro": "PRO curves", "gallery": "Gallery"}


def _missing_maps(runs_frame: pd.DataFrame, category: str, results: str) -> str:
    """Which runs of a category measured pixel metrics but saved no maps.npz, and the command that writes them
    ("" when none)."""
    measured = _runs_of(runs_frame, category)
    measured = measured[measured["aupro"].notna()]
    without = measured[[not _has_maps_file(row) for _, row in measured.iterrows()]]
    if without.empty:
        return ""
    names = "; ".join(f"{backbone} seed {', '.join(map(str, group['seed']))}"
                      for backbone, group in without.groupby("backbone"))
    return f"no maps.npz for {names} (`main.py test` ran without maps); `{retest_command(results)}` writes them"


def _skip_caption(kind: str, runs_frame: pd.DataFrame, category: str, results: str) -> str:
    """Why a per-category figure is missing: no masks in the data, or which runs saved no maps.npz and the command
    that writes them."""
    if kind == "extremes":
        return f"Hardest images for {category} skipped: no seed run by every backbone."
    if _runs_of(runs_frame, category)["aupro"].isna().all():
        return (f"{NEEDS_MAPS[kind]} for {category} skipped: the data has no ground-truth masks (pixel metrics not "
                "measured).")
    missing = _missing_maps(runs_frame, category, results)
    why = missing or "no seed where every backbone saved maps with masks"
    return f"{NEEDS_MAPS[kind]} for {category} skipped: {why}."


def _caption(kind: str, caption: str, runs_frame: pd.DataFrame, category: str, results: str) -> tuple[str, str]:
    """A drawn figure's caption, and its note when some runs are missing from it (PRO curves without maps)."""
    text = caption.format(c=category)
    missing = _missing_maps(runs_frame, category, results) if kind in NEEDS_MAPS else ""
    note = f"{NEEDS_MAPS[kind]} for {category} incomplete: {missing}." if missing else ""
    return (f"{text} {note}" if note else text), note


def _forest_items(comparison) -> list[FigureItem]:
    """A forest plot per pair and metric of the default primary family or of a declared primary question."""
    items = []
    aggregate = comparison.aggregate
    for pair in dict.fromkeys(aggregate["pair"]):
        a, b = pair.split(" vs ")
        declared = aggregate.loc[(aggregate["pair"] == pair) & (aggregate["family"] == "primary"), "metric"]
        for metric in dict.fromkeys([*DEFAULT_PRIMARY_METRICS, *declared]):
            label = PAIRED_METRICS[metric]
            figure = forest_figure(comparison.intervals, comparison.aggregate, pair, metric)
            name = f"forest_{a}_vs_{b}_{metric}"
            caption = (f"Forest plot, {label}, {a} − {b}: each category's difference (mean over its seeds) with "
                       "its 95% t interval from its own seeds (test images fixed; none with one seed); diamonds: the "
                       "group means with their \"on these categories\" intervals." if figure is not None else
                       f"Forest plot, {label}, {a} − {b}, skipped: no category has this metric for both backbones.")
            items.append(FigureItem("forest", name, caption, figure))
    return items


def make_figures(runs_frame: pd.DataFrame, comparison=None, results: str = "results") -> list[FigureItem]:
    """Every figure of the report, grouped by section (forest plots first), categories sorted.

    ``comparison`` (comparison.Comparison) supplies the forest plots and the PRO curves; without it both are
    skipped. Categories are drawn one after another so that each category's maps are read once.
    """
    items = _forest_items(comparison) if comparison is not None else []
    curves: ProCurves = {} if comparison is None else {
        run_dir: resampled.pro_curve for run_dir, resampled in comparison.resamples.items()
        if resampled.pro_curve is not None}
    items.append(FigureItem("bars", "bars", "Image AUROC, pixel AUROC and AUPRO per category and backbone.",
                            bars_figure(runs_frame)))
    per_kind: dict[str, list[FigureItem]] = {kind: [] for kind, _, _ in PER_CATEGORY_FIGURES}
    for c in sorted(set(runs_frame["category"])):
        for kind, draw, caption in PER_CATEGORY_FIGURES:
            figure = draw(runs_frame, c, curves) if kind == "pro" else draw(runs_frame, c)
            if figure is None:
                caption = _skip_caption(kind, runs_frame, c, results)
                per_kind[kind].append(FigureItem(kind, f"{kind}_{c}", caption, None))
            else:
                text, note = _caption(kind, caption, runs_frame, c, results)
                per_kind[kind].append(FigureItem(kind, f"{kind}_{c}", text, figure, note))
    return items + [item for kind_items in per_kind.values() for item in kind_items]


def skipped_figures(items: list[FigureItem]) -> list[str]:
    """What is missing from the report: the captions of the figures not drawn and the notes of incomplete ones
    (each says why and, for missing maps, the command that writes them)."""
    return [item.caption if item.figure is None else item.note for item in items if item.figure is None or item.note]


def save_figures(items: list[FigureItem], directory: str | os.PathLike) -> None:
    """Write each figure as ``<name>.png`` (no timestamp in the file), each atomically."""
    directory = Path(directory)
    for item in items:
        if item.figure is not None:
            buffer = io.BytesIO()
            item.figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None},
                                pil_kwargs={"compress_level": PNG_COMPRESSION})
            atomic_write(directory / f"{item.name}.png", lambda tmp: tmp.write_bytes(buffer.getvalue()))


def show(items: list[FigureItem], kind: str) -> None:
    """Notebook helper: display the figures (or skip notes) of one section inline."""
    from IPython.display import Markdown, display

    for item in items:
        if item.kind == kind:
            display(item.figure if item.figure is not None else Markdown(f"_{item.caption}_"))
