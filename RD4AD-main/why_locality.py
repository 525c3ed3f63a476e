"""The Why section's "How local the teacher is": effective receptive fields and CKA of the frozen teachers.

Reads what ``main.py analyse`` wrote (why_files.py): per (backbone, category) the radii holding 50 % and 90 % of
the centre feature's input-gradient mass per tap (rings around that feature's receptive-field centre, placed
from the teacher's own kernels, strides and paddings), with every validation normal's ring profile, and per pair the
linear CKA of their taps. Paired differences of the radii get a percentile bootstrap interval over the validation
normals (both teachers saw the same images; the same draws for both), averaged over categories. No model code.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

import why_files
from comparison import CONFIDENCE, N_BOOT
from locality import mass_radius
from significance import multiplicities, percentile_interval, seeded_rng
from why_part import WhyPart

__all__ = ["ADDED_BY", "KEY", "TITLE", "erf_figure", "pair_table", "part", "radius_table", "read_records", "stale"]

KEY = "locality"
TITLE = "How local the teacher is"
ADDED_BY = ("`main.py analyse --results {results}` measures each frozen teacher's receptive fields and the pairs' "
            "CKA on the validation normals")
FRACTIONS = {"r50": 0.5, "r90": 0.9}
Records = dict[tuple[str, str], dict]  # (backbone, category) -> read_locality's record


def read_records(runs_frame: pd.DataFrame, results: str) -> tuple[Records, list[str]]:
    """The locality records of the compared (backbone, category) pairs that ``analyse`` measured, and (in the same
    read) those pairs whose teacher_locality.json an older ``analyse`` wrote, as "backbone/category"."""
    found, outdated = {}, []
    for backbone, category in sorted(set(zip(runs_frame["backbone"], runs_frame["category"]))):
        record, old = why_files.locality_state(results, backbone, category)
        if record is not None:
            found[(backbone, category)] = record
        if old:
            outdated.append(f"{backbone}/{category}")
    return found, outdated


def stale(runs_frame: pd.DataFrame, results: str) -> list[str]:
    """The compared (backbone, category) pairs whose teacher_locality.json an older ``analyse`` wrote, as
    "backbone/category" (``read_locality`` does not read them; ``analyse`` measures them again)."""
    pairs = sorted(set(zip(runs_frame["backbone"], runs_frame["category"])))
    return [f"{backbone}/{category}" for backbone, category in pairs
            if why_files.outdated_locality(results, backbone, category)]


def radius_table(records: Records) -> pd.DataFrame:
    """One row per (backbone, tap): the radii of the mean ERF (px), mean and range over categories."""
    rows = [{"backbone": b, "category": c, "tap": tap["tap"], "stride_px": tap["stride_px"],
             "image_size": r["image_size"],
             "r50": tap["erf_r50_px"], "r90": tap["erf_r90_px"]} for (b, c), r in records.items() for tap in r["taps"]]
    frame = pd.DataFrame(rows)
    out = []
    for (backbone, tap), group in frame.groupby(["backbone", "tap"], sort=False):
        out.append({"backbone": backbone, "tap": tap, "stride (px)": round(float(group["stride_px"].iloc[0]), 1),
                    "categories": len(group), "image size (px)": ", ".join(map(str, sorted(set(group["image_size"])))),
                    **{f"{name} (px)": _mean_range(group[name]) for name in FRACTIONS}})
    return pd.DataFrame(out)


def _mean_range(values: pd.Series) -> str:
    mean = f"{values.mean():.2f}"
    return mean if len(values) == 1 else f"{mean} [{values.min():.2f}, {values.max():.2f}]"



def _difference(a: dict, b: dict, tap: int, fraction: float, n_boot: int, rng: np.random.Generator
                ) -> tuple[float, np.ndarray]:
    """Radius of a's mean ERF minus b's at ``tap`` (0-based), and its replicates over resampled normals."""
    profiles_a, profiles_b = a["profiles"][tap], b["profiles"][tap]
    weights = multiplicities(profiles_a.shape[0], n_boot, rng) / profiles_a.shape[0]
    point = mass_radius(profiles_a.mean(0), fraction) - mass_radius(profiles_b.mean(0), fraction)
    return float(point), mass_radius(weights @ profiles_a, fraction) - mass_radius(weights @ profiles_b, fraction)


def pair_table(records: Records, results: str, pairs: list[tuple[str, str]], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per pair and tap: radii, their paired difference a - b with its interval, and the CKA over categories.
    Only categories where both teachers were measured on the same normals count."""
    rows = []
    for a, b in pairs:
        categories = sorted(c for (backbone, c) in records if backbone == a and (b, c) in records
                            and records[(a, c)]["val_images"] == records[(b, c)]["val_images"])
        if not categories:
            continue
        taps = min(min(len(records[(a, c)]["taps"]), len(records[(b, c)]["taps"])) for c in categories)
        for tap in range(taps):
            row = {"pair": f"{a} - {b}", "a": a, "b": b, "tap": tap + 1, "categories": len(categories),
                   "normals": sum(records[(a, c)]["n_images"] for c in categories)}
            for name, fraction in FRACTIONS.items():
                points, replicates = [], []
                for category in categories:
                    point, draws = _difference(records[(a, category)], records[(b, category)], tap, fraction, n_boot,
                                               seeded_rng(KEY, a, b, category, tap))
                    points.append(point)
                    replicates.append(draws)
                low, high = percentile_interval(np.mean(replicates, axis=0), CONFIDENCE)
                row |= {f"{name} a (px)": np.mean([records[(a, c)]["taps"][tap][f"erf_{name}_px"] for c in categories]),
                        f"{name} b (px)": np.mean([records[(b, c)]["taps"][tap][f"erf_{name}_px"] for c in categories]),
                        f"{name} a-b (px)": float(np.mean(points)), f"{name} ci_low": low, f"{name} ci_high": high}
            cka = [_cka(results, c, a, b, tap) for c in categories]
            cka = [value for value in cka if value is not None]
            row |= {"cka": float(np.mean(cka)) if cka else np.nan, "cka_min": min(cka, default=np.nan),
                    "cka_max": max(cka, default=np.nan)}
            rows.append(row)
    return pd.DataFrame(rows)


def _cka(results: str, category: str, a: str, b: str, tap: int) -> float | None:
    record = why_files.read_cka(results, category, a, b)
    if record is None or tap >= len(record["taps"]) or record["taps"][tap]["cka"] is None:
        return None
    return float(record["taps"][tap]["cka"])


def erf_figure(records: Records, backbones: list[str]):  # noqa: ANN201  (a matplotlib Figure; imported lazily)
    """Each backbone's mean ERF per tap (rows: backbones, columns: taps), averaged over its categories, each
    scaled to its own maximum; circles at the radii holding 50 % (solid) and 90 % (dashed) of the mass."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    taps = max(len(r["taps"]) for r in records.values())
    fig = Figure(figsize=(2.6 * taps, 2.6 * len(backbones) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(backbones), taps, squeeze=False))
    for row, backbone in enumerate(backbones):
        mine = [r for (b, _), r in records.items() if b == backbone]
        sizes = {r["maps"].shape[-2:] for r in mine}
        mine = [r for r in mine if r["maps"].shape[-2:] == sorted(sizes)[0]]  # one image size per row
        for tap in range(taps):
            ax = axes[row, tap]
            ax.set_xticks([])
            ax.set_yticks([])
            if tap >= len(mine[0]["taps"]):
                ax.set_visible(False)
                continue
            erf = np.mean([r["maps"][tap] / max(float(r["maps"][tap].max()), 1e-30) for r in mine], axis=0)
            info = mine[0]["taps"][tap]
            ax.imshow(erf, cmap="magma", interpolation="nearest")
            for name, style in (("r50", "-"), ("r90", "--")):
                radius = np.mean([r["taps"][tap][f"erf_{name}_px"] for r in mine])
                ax.add_patch(Circle((info["centre_x"], info["centre_y"]), radius, fill=False, color="cyan",
                                    linestyle=style, linewidth=1))
            r50 = np.mean([r["taps"][tap]["erf_r50_px"] for r in mine])
            ax.set_title(f"{backbone} tap {tap + 1}\nstride {info['stride_px']:g}, r50 {r50:.1f} px", fontsize="small")
    fig.suptitle("Effective receptive fields of the centre feature (mean |gradient| over validation normals)",
                 fontsize="medium")
    return fig


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _finding(table: pd.DataFrame) -> str | None:
    sentences = []
    for _, row in table[table["tap"] == 1].iterrows():
        cka = "n/a" if np.isnan(row["cka"]) else f"{row['cka']:.2f}"
        sentences.append(
            f"at tap 1 (the finest) {row['a']}'s teacher draws 50 % of its centre feature's input gradient from within "
            f"{row['r50 a (px)']:.1f} px and {row['b']}'s from within {row['r50 b (px)']:.1f} px, a difference of "
            f"{row['r50 a-b (px)']:+.1f} px ({100 * CONFIDENCE:.0f} % bootstrap interval over validation normals "
            f"[{row['r50 ci_low']:+.1f}, {row['r50 ci_high']:+.1f}], "
            f"{_count(row['categories'], 'category', 'categories')}, "
            f"{row['normals']} normals); linear CKA between the two at this tap {cka}")
    return ("; ".join(sentences) + ".") if sentences else None


def part(runs_frame: pd.DataFrame, results: str, pairs: list[tuple[str, str]]) -> WhyPart | None:
    """The instrument's share of the Why section; None when ``analyse`` has measured none of the compared teachers."""
    from plots import FigureItem

    records, outdated = read_records(runs_frame, results)
    if not records:
        return None
    radii = radius_table(records)
    differences = pair_table(records, results, pairs)
    shown = differences.round(3) if not differences.empty else differences
    backbones = list(dict.fromkeys(b for b, _ in records))
    text = (
        "Measured by `main.py analyse` on each category's validation normals (the runs' hold-out; no test image), once "
        "per (backbone, category) since the teacher is frozen (a random teacher: the lowest seed's). For each of the "
        "teacher's taps, the effective receptive field is the gradient of the centre feature (the sum over channels at "
        "the centre position) with respect to the input image, absolute and summed over the colour channels, averaged "
        "over the normals; r50 and r90 are the radii holding "
        f"{100 * FRACTIONS['r50']:.0f} % and {100 * FRACTIONS['r90']:.0f} % of its mass, in input pixels (rings of "
        "1 px, linear in between), around the centre of that feature's receptive field as the teacher's own layers "
        "place it (the kernels, strides and paddings of its convolutions, poolings and patch mergings: a padded "
        "stride-2 ResNet puts cell i of a stride-s tap at s i, a patchify ConvNeXt or Swin at s i + (s - 1) / 2). "
        "A radius near half the image size means the field is cut by the image border. "
        "Differences a - b are paired (the same normals), averaged over categories, with a percentile bootstrap "
        f"interval from {N_BOOT} resamples of the normals within each category. CKA: linear CKA between the two "
        "teachers' taps of the same index on the same normals (rows: image x position, pooled to the smaller size; "
        "1 = the same features up to rotation and scale).")
    if outdated:
        text += (f" Not read here: {', '.join(outdated)}, measured by an older `main.py analyse` (rings centred on "
                 f"the patchify midpoint); `main.py analyse --results {results}` measures them again.")
    figures = [FigureItem("why", "why_locality_erf", "Effective receptive fields per backbone and tap (circles: r50 "
                          "solid, r90 dashed)", erf_figure(records, backbones))]
    return WhyPart(KEY, TITLE, text, {"radii": radii, "pairs": shown}, figures,
                   _finding(differences) if not differences.empty else None)
