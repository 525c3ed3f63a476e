"""The comparison report's figures, drawn from results files only.

Each function returns a matplotlib Figure built without pyplot (no global state, nothing leaks in a
long notebook, no display needed: PNGs go through Agg); ``make_figures`` collects them and
``save_figures`` writes the PNGs. Images come from PIL in RGB; anomaly maps use 'jet' so that high
anomaly is warm (red).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from metrics import image_auroc, pro_curve, roc_curve
from runs import METRICS, load_maps, load_scores, read_history

__all__ = ["FigureItem", "PER_CATEGORY_FIGURES", "backbone_colors", "bars_figure", "extremes_figure",
           "gallery_figure", "histogram_figure", "history_figure", "make_figures", "pro_figure", "roc_figure",
           "save_figures", "show"]

MAP_COLORMAP = "jet"  # blue = normal, red = anomalous
PRO_FPR_LIMIT = 0.3
LINE_STYLES = ("-", "--", ":", "-.")
SECTIONS = {
    "bars": "Per-category results with error bars",
    "roc": "ROC curves (image level)",
    "pro": f"PRO curves up to FPR {PRO_FPR_LIMIT}",
    "hist": "Score histograms with the validation threshold",
    "gallery": "Anomaly maps of the same test images, backbones side by side",
    "extremes": "Lowest-scored defects and highest-scored normals",
}
BAR_METRICS = ("image_auroc", "pixel_auroc", "aupro")
UNMAPPED_SHAPE = (128, 128)  # display size of images shown without an anomaly map


@dataclass
class FigureItem:
    """One figure of the report (or, with ``figure`` None, the note saying why it was skipped)."""

    kind: str
    name: str
    caption: str
    figure: Figure | None

    @property
    def section(self) -> str:
        return SECTIONS[self.kind]


def backbone_colors(backbones: list[str]) -> dict[str, tuple]:
    """A fixed colour per backbone (sorted names, tab10), the same in every figure."""
    palette = matplotlib.colormaps["tab10"]
    return {name: palette(index % 10) for index, name in enumerate(sorted(backbones))}


def _runs_of(runs_frame: pd.DataFrame, category: str) -> pd.DataFrame:
    return runs_frame[runs_frame["category"] == category].sort_values(["backbone", "seed"])


def _has_masks(row: pd.Series) -> bool:
    """Pixel metrics were measured and the maps were saved."""
    return not np.isnan(row["aupro"]) and load_maps(row["run_dir"]) is not None


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
                    label=f"{backbone}, seed {row.seed} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate (normal images flagged)",
           ylabel="true positive rate (defective images found)", title=f"Image-level ROC, {category}")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def pro_figure(runs_frame: pd.DataFrame, category: str) -> Figure | None:
    """PRO curves up to FPR 0.3 from maps.npz and masks; None when no run of the category has masks."""
    rows = [row for _, row in _runs_of(runs_frame, category).iterrows() if _has_masks(row)]
    if not rows:
        return None
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = backbone_colors(list(runs_frame["backbone"].unique()))
    seed_index = {seed: index for index, seed in enumerate(sorted(set(runs_frame["seed"])))}
    for row in rows:
        data = load_maps(row["run_dir"])
        fpr, pro = pro_curve(data["maps"].astype(np.float32), data["masks"], fpr_limit=PRO_FPR_LIMIT)
        ax.plot(fpr, pro, color=colors[row["backbone"]], linestyle=LINE_STYLES[seed_index[row["seed"]] % 4],
                label=f"{row['backbone']}, seed {row['seed']} (AUPRO {row['aupro']:.3f})")
    ax.set(xlim=(0, PRO_FPR_LIMIT), ylim=(0, 1.02), xlabel="false positive rate (normal pixels)",
           ylabel="per-region overlap (PRO)", title=f"PRO curve up to FPR {PRO_FPR_LIMIT}, {category}")
    ax.legend(loc="lower right", fontsize="small")
    return fig


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
            ax.bar(positions, np.nan_to_num(means), width, yerr=stds, capsize=3, color=colors[backbone], label=backbone)
            for position in positions[np.isnan(means)]:
                ax.text(position, bottom + 1, "n/a", ha="center", va="bottom", fontsize="small", rotation=90)
        ax.set(ylim=(bottom, 101), xticks=x, xticklabels=categories,
               ylabel=f"{METRICS[metric]} (%)", title=METRICS[metric], xlabel="category")
        ax.tick_params(axis="x", rotation=30)
    fig.legend(*axes[0].get_legend_handles_labels(), title="backbone", loc="outside right upper", fontsize="small")
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
            bins = np.histogram_bin_edges(np.append(scores["score"], row["threshold"]), bins=20)
            ax.hist(scores.loc[scores["label"] == 0, "score"], bins=bins, alpha=0.6, color="tab:blue", label="normal")
            ax.hist(scores.loc[scores["label"] == 1, "score"], bins=bins, alpha=0.6, color="tab:red", label="defective")
            if not np.isnan(row["threshold"]):
                ax.axvline(row["threshold"], color="black", linestyle="--",
                           label=f"validation threshold {row['threshold']:.3g}")
            ax.set(title=f"{backbone}, seed {seed}", xlabel="image anomaly score", ylabel="test images")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize="x-small")
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
        ax.imshow(np.full((*shape, 3), 0.5))
        ax.text(0.5, 0.5, "image file\nnot found", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.imshow(rgb)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Axes, rgb: np.ndarray | None, anomaly: np.ndarray, limits: tuple[float, float]):
    """The image with its anomaly map on top (jet, half transparent); returns the map's artist."""
    _show_image(ax, rgb, anomaly.shape)
    return ax.imshow(anomaly.astype(np.float32), cmap=MAP_COLORMAP, alpha=0.5, vmin=limits[0], vmax=limits[1])


def _map_lookup(data: dict[str, np.ndarray]) -> dict[str, int]:
    return {str(path): index for index, path in enumerate(data["paths"])}


def _limits(data: dict[str, np.ndarray]) -> tuple[float, float]:
    """One colour scale per run: the range of all its test maps, so images compare within a column."""
    return float(data["maps"].min()), float(data["maps"].max())


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
    for i, image in enumerate(chosen.itertuples()):
        index = _map_lookup(first)[image.path]
        rgb = load_rgb(image.path, rows[backbones[0]], first["maps"].shape[1:])
        _show_image(axes[i][0], rgb, first["maps"].shape[1:])
        axes[i][0].set(title="image", ylabel=f"{image.defect_type}\n{Path(image.path).name}")
        axes[i][1].imshow(first["masks"][index], cmap="gray", vmin=0, vmax=1)
        axes[i][1].set(title="ground truth (white = defect)", xticks=[], yticks=[])
        for j, backbone in enumerate(backbones):
            ax, run_maps = axes[i][2 + j], data[backbone]
            artist = _overlay(ax, rgb, run_maps["maps"][_map_lookup(run_maps)[image.path]], _limits(run_maps))
            ax.set_title(f"{backbone}\nimage score {scores[backbone].at[image.path, 'score']:.3g}")
            fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.02, label="anomaly score")
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
    artist = None
    for ax, image in zip(axes, images.itertuples()):
        flagged = image.score > row["threshold"]  # metrics.py's rule: anomalous when above the threshold
        verdict = ("found" if flagged else "missed") if image.label == 1 else ("false alarm" if flagged else "passed")
        if image.path in lookup:
            anomaly = data["maps"][lookup[image.path]]
            artist = _overlay(ax, load_rgb(image.path, row, anomaly.shape), anomaly, _limits(data))
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


# Per-category figures: (kind, drawing function, caption, caption when the function returns None).
PER_CATEGORY_FIGURES = (
    ("roc", roc_figure, "Image-level ROC curves, {c}.", None),
    ("pro", pro_figure, "PRO curves, {c}.",
     "PRO curves for {c} skipped: no ground-truth masks (pixel metrics are null or maps.npz missing)."),
    ("hist", histogram_figure, "Score histograms, {c}.", None),
    ("gallery", gallery_figure, "Anomaly-map gallery, {c}.",
     "Gallery for {c} skipped: no seed where every backbone saved maps with masks."),
    ("extremes", extremes_figure, "Lowest-scored defects and highest-scored normals, {c}.",
     "Hardest images for {c} skipped: no seed run by every backbone."),
)


def make_figures(runs_frame: pd.DataFrame) -> list[FigureItem]:
    """Every figure of the report, grouped by section, categories sorted."""
    items = [FigureItem("bars", "bars", "Image AUROC, pixel AUROC and AUPRO per category and backbone.",
                        bars_figure(runs_frame))]
    for kind, draw, caption, skipped in PER_CATEGORY_FIGURES:
        for c in sorted(set(runs_frame["category"])):
            figure = draw(runs_frame, c)
            items.append(FigureItem(kind, f"{kind}_{c}", (caption if figure else skipped).format(c=c), figure))
    return items


def save_figures(items: list[FigureItem], directory: str | os.PathLike) -> None:
    """Write each figure as ``<name>.png`` (no timestamp in the file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.figure is not None:
            item.figure.savefig(directory / f"{item.name}.png", dpi=100, metadata={"Software": None})


def show(items: list[FigureItem], kind: str) -> None:
    """Notebook helper: display the figures (or skip notes) of one section inline."""
    from IPython.display import Markdown, display

    for item in items:
        if item.kind == kind:
            display(item.figure if item.figure is not None else Markdown(f"_{item.caption}_"))
