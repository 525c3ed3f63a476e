"""The shared-protocol check of ``compare``: which settings the runs of a compared pair share, read from their
config.json, instead of asserting "same recipe".

Within each category, every run of a pair (both arms, every seed) must have the same data root and format,
split file, validation fraction and split seed, held-out file names, image size, epochs, batch size, learning
rate, betas, precision and selection rule, and, when both arms are of one family (where the knobs mean the
same), the same model knobs; runs of one method the same method settings (RD++'s fixed recipe, config.json "rdpp").
A pair whose arms train with different methods (RD4AD and RD++, backbone_facts.METHODS) is a **method comparison**
and its protocol says so first; an interaction (two backbones under two methods, interaction.py) is a method
comparison across the methods and a backbone comparison within each, and its protocol line lists the differing
recipes within each method as a pair's, then those between the methods. ``recorded_settings`` turns one config.json
into the run-table columns (runs.load_runs adds them to runs.csv); ``check_protocol`` compares them; the report
names the result in its headline ("shared recipe", "per-arm tuned recipe (...tune.csv)" when ``main.py tune`` chose
the differing values, or "differing recipes: ...") and lists every difference in its provenance lines. Reads results
only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from backbone_facts import DEFAULT_METHOD, method_label, split_arm
from errors import RDError

__all__ = ["METHOD_SETTINGS", "NOT_RECORDED", "PROTOCOL_FIELDS", "TUNED_FIELDS", "Difference", "PairProtocol",
           "check_protocol", "differences_text", "headline_sentence", "interaction_line", "names_digest",
           "recorded_settings", "refuse_same_recipe"]

NOT_RECORDED = "not recorded"
# run-table column -> what it is; all compared within each category over every run of a pair
PROTOCOL_FIELDS: dict[str, str] = {
    "data_root": "data root",
    "dataset": "data format",
    "split_sha256": "split file SHA-256",
    "val_fraction": "validation fraction",
    "split_seed": "split seed",
    "val_names_sha256": "held-out file names (SHA-256)",
    "image_size": "image size",
    "epochs": "epochs",
    "batch_size": "batch size",
    "lr": "lr",
    "betas": "betas",
    "float_precision": "precision",
    "selection": "selection rule",
    "model_knobs": "model knobs",
    "method_settings": "method settings",
}
KNOBS = "model_knobs"  # compared only between backbones of one family: another family's knobs mean other things
METHOD_SETTINGS = "method_settings"  # compared only between runs of one method: RD4AD has none, RD++ its fixed recipe
TUNED_FIELDS = ("lr", "betas", "epochs")  # what `main.py tune` chooses per arm (its grid: --lr, --beta1, --epochs)
TUNED_BY = "tuned_by"  # config.json: the tune.csv whose choice a run's --config file holds
_MISSING = ("", "unknown", "None", "nan", NOT_RECORDED)
FamilyOf = Callable[[str], str]


def names_digest(names: list[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the sorted names, one per line: equal digests, equal sets."""
    return hashlib.sha256("\n".join(sorted(map(str, names))).encode("utf-8")).hexdigest()[:16]


def _value(config: dict[str, Any], name: str) -> str:
    value = config.get(name)
    return NOT_RECORDED if value is None else str(value)


def _betas(config: dict[str, Any]) -> str:
    """``(beta1, beta2)``; from ``betas`` in configs that record the pair as one list."""
    if config.get("beta1") is not None and config.get("beta2") is not None:
        return f"({config['beta1']}, {config['beta2']})"
    betas = config.get("betas")
    return f"({betas[0]}, {betas[1]})" if isinstance(betas, (list, tuple)) and len(betas) == 2 else NOT_RECORDED


def _precision(config: dict[str, Any]) -> str:
    """Training autocast as resolved on the run's device (``fast_path``), and the scoring precision."""
    fast = config.get("fast_path")
    train = fast.get("autocast") if isinstance(fast, dict) else None
    if train is None:
        return NOT_RECORDED
    scoring = {"off": "float32"}.get(str(config.get("eval_amp") or "off"), str(config.get("eval_amp")))
    return f"training {'float32' if train == 'off' else train}, scoring {scoring}"


def recorded_settings(config: dict[str, Any]) -> dict[str, str]:
    """The protocol columns one config.json adds to the run table (text; ``not recorded`` when the run predates
    the field). The data root and format, image size, epochs and selection are runs.py's own columns."""
    data = config.get("data")
    split = NOT_RECORDED if not isinstance(data, dict) else str(data.get("split_csv_sha256") or "none (folder layout)")
    names = config.get("val_names")
    knobs = config.get("model_knobs")
    return {
        "split_sha256": split,
        "val_fraction": _value(config, "val_fraction"),
        "split_seed": _value(config, "split_seed"),
        "val_names_sha256": names_digest(names) if isinstance(names, list) else NOT_RECORDED,
        "batch_size": _value(config, "batch_size"),
        "lr": _value(config, "lr"),
        "betas": _betas(config),
        "float_precision": _precision(config),
        KNOBS: json.dumps(knobs, sort_keys=True) if isinstance(knobs, dict) else NOT_RECORDED,
        METHOD_SETTINGS: _method_settings(config),
        TUNED_BY: _value(config, TUNED_BY),
    }


def _method_settings(config: dict[str, Any]) -> str:
    """The method's own fixed settings as recorded: RD++'s ``rdpp`` record, ``none`` for RD4AD (it has none)."""
    method = config.get("method") or DEFAULT_METHOD
    if method == DEFAULT_METHOD:
        return "none"
    settings = config.get(method)
    return json.dumps(settings, sort_keys=True) if isinstance(settings, dict) else NOT_RECORDED


@dataclass(frozen=True)
class Difference:
    """One setting on which the runs of one category disagree: each backbone's values there."""

    column: str
    category: str
    values: tuple[tuple[str, str], ...]  # (backbone, its distinct values joined by " / "), sorted by backbone

    @property
    def label(self) -> str:
        return PROTOCOL_FIELDS[self.column]

    def describe(self) -> str:
        return ", ".join(f"{backbone} {values}" for backbone, values in self.values)


@dataclass
class PairProtocol:
    """What the runs of one compared pair share, and what they do not."""

    pair: tuple[str, str]
    n_runs: int
    methods: tuple[str, ...] = (DEFAULT_METHOD,)  # the methods the pair's runs train with (two: a method comparison)
    differences: list[Difference] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # columns some run did not record
    tuned_by: list[str] = field(default_factory=list)  # the tune.csv files, when every run of the pair has one

    @property
    def differing(self) -> list[str]:
        """The columns that differ, in PROTOCOL_FIELDS order."""
        found = {d.column for d in self.differences}
        return [column for column in PROTOCOL_FIELDS if column in found]

    @property
    def method_comparison(self) -> bool:
        """Whether the pair's arms train with different methods (RD4AD vs RD++)."""
        return len(self.methods) > 1

    @property
    def kind(self) -> str:
        """``shared recipe``, ``per-arm tuned recipe (<tune.csv>)`` or ``differing recipes: <settings>``, after
        ``method comparison (RD4AD vs RD++); `` when the arms' methods differ."""
        prefix = f"method comparison ({' vs '.join(map(method_label, self.methods))}); " if self.method_comparison \
            else ""
        if not self.differences:
            return prefix + "shared recipe" + (" otherwise" if prefix else "")
        if self.tuned_by and set(self.differing) <= set(TUNED_FIELDS):
            return prefix + f"per-arm tuned recipe ({', '.join(self.tuned_by)})"
        return prefix + "differing recipes: " + ", ".join(PROTOCOL_FIELDS[column] for column in self.differing)


def _column_differences(runs_frame: pd.DataFrame, column: str, family: FamilyOf) -> tuple[list[Difference], bool]:
    """The categories (and, for the knobs, families) whose runs record more than one value of ``column``; and
    whether any run did not record it."""
    frame = runs_frame.assign(_value=runs_frame[column].astype(str))
    missing = frame["_value"].isin(_MISSING)
    # a run is named by backbone, category, seed; knobs are compared within a family, method settings within a method
    keys = ["category"] + (["_family"] if column == KNOBS else ["_method"] if column == METHOD_SETTINGS else [])
    if column == KNOBS:
        frame = frame.assign(_family=[family(name) for name in frame["backbone"]])
    if column == METHOD_SETTINGS:
        frame = frame.assign(_method=_methods_of(frame))
    differences = []
    for key, group in frame[~missing].groupby(keys, sort=True):
        if group["_value"].nunique() > 1:
            values = tuple((backbone, " / ".join(sorted(set(rows["_value"]))))
                           for backbone, rows in group.groupby("backbone", sort=True))
            differences.append(Difference(column, str(key[0]), values))
    return differences, bool(missing.any())


def check_protocol(runs_frame: pd.DataFrame, pair: tuple[str, str] | None = None,
                   family: FamilyOf = lambda name: name) -> PairProtocol:
    """Compare every PROTOCOL_FIELDS column over the runs of ``pair`` (all runs when None), category by category.

    ``family`` maps a backbone to its family: model knobs are compared only within one family.
    """
    frame = runs_frame if pair is None else runs_frame[runs_frame["backbone"].isin(pair)]
    names = pair or tuple(sorted(set(frame["backbone"])))
    methods = tuple(sorted(set(_methods_of(frame)), key=lambda m: (m != DEFAULT_METHOD, m)))
    result = PairProtocol(tuple(names), len(frame), methods or (DEFAULT_METHOD,))
    for column in PROTOCOL_FIELDS:
        if column not in frame.columns:
            result.unchecked.append(column)
            continue
        differences, missing = _column_differences(frame, column, family)
        result.differences += differences
        if missing:
            result.unchecked.append(column)
    if TUNED_BY in frame.columns and len(frame) and not frame[TUNED_BY].astype(str).isin(_MISSING).any():
        result.tuned_by = sorted(set(frame[TUNED_BY].astype(str)))
    return result


def _methods_of(frame: pd.DataFrame) -> list[str]:
    """Each run's method (runs.load_runs' ``method`` column; RD4AD for a table from before RD++ existed)."""
    if "method" not in frame.columns:
        return [DEFAULT_METHOD] * len(frame)
    return [str(m) if isinstance(m, str) and m else DEFAULT_METHOD for m in frame["method"]]


def _grouped(differences: list[Difference]) -> list[str]:
    """"lr: resnet50 0.005, convnext_tiny 0.001 (synth_object, synth_texture)": one item per setting and values."""
    categories: dict[tuple[str, str], list[str]] = {}
    for difference in differences:
        categories.setdefault((difference.label, difference.describe()), []).append(difference.category)
    return [f"{label}: {values} ({', '.join(names)})" for (label, values), names in categories.items()]


def _unchecked(check: PairProtocol) -> str:
    return ", ".join(PROTOCOL_FIELDS[column] for column in check.unchecked)


def differences_text(runs_frame: pd.DataFrame, family: FamilyOf = lambda name: name) -> str:
    """The provenance clause: the recipe shared by every run of each category, or every difference."""
    check = check_protocol(runs_frame, None, family)
    unchecked = f"; not recorded by some runs, so not checked: {_unchecked(check)}" if check.unchecked else ""
    if not check.differences:
        return f"recipe shared by the runs of each category ({len(PROTOCOL_FIELDS)} settings checked{unchecked})"
    return f"**recipe DIFFERS** within a category: {'; '.join(_grouped(check.differences))}{unchecked}"


def headline_sentence(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]],
                      family: FamilyOf = lambda name: name) -> str:
    """The headline's protocol lines: per compared pair, the recipe its runs share or how it differs."""
    lines = []
    for pair in pairs:
        check = check_protocol(runs_frame, pair, family)
        text = f"Protocol of {pair[0]} − {pair[1]} ({check.n_runs} runs, from their config.json): **{check.kind}**"
        if check.differences:
            text += f"; {'; '.join(_grouped(check.differences))}"
        if check.unchecked:
            text += f"; not checked (not recorded by some runs): {_unchecked(check)}"
        lines.append(f"- {text}.")
    return "\n".join(lines)


def interaction_line(runs_frame: pd.DataFrame, pairs: tuple[tuple[str, str], tuple[str, str]],
                     family: FamilyOf = lambda name: name) -> str:
    """The headline's protocol line of an interaction (a − b under one method against a − b under the other): a
    method comparison across the methods and a backbone comparison within each; each method's pair checked as a pair
    is, then the settings that differ only between the methods (model knobs within a family, method settings within
    a method, as everywhere)."""
    arms = [arm for pair in pairs for arm in pair]
    frame = runs_frame[runs_frame["backbone"].isin(arms)]
    whole = check_protocol(frame, None, family)
    within = [check_protocol(frame, pair, family) for pair in pairs]
    methods = [method_label(split_arm(pair[0])[1]) for pair in pairs]
    label = " − ".join(f"({pair[0]} − {pair[1]})" for pair in pairs)
    text = (f"Protocol of the interaction {label} ({whole.n_runs} runs, from their config.json): **method comparison "
            f"across methods ({' vs '.join(methods)}), backbone comparison within each**")
    for method, check in zip(methods, within):
        text += f"; within {method}: {check.kind}" + (f" ({'; '.join(_grouped(check.differences))})"
                                                     if check.differences else "")
    seen = {(d.column, d.category) for check in within for d in check.differences}
    between = [d for d in whole.differences if (d.column, d.category) not in seen]
    text += f"; between the methods: {'; '.join(_grouped(between))}" if between else \
        "; between the methods: no other setting differs"
    if whole.unchecked:
        text += f"; not checked (not recorded by some runs): {_unchecked(whole)}"
    return f"- {text}."


def refuse_same_recipe(text: str, runs_frame: pd.DataFrame, where: str, family: FamilyOf = lambda name: name) -> None:
    """An RDError when ``text`` says "same recipe" while the runs' recipes differ (a claim the files contradict)."""
    if "same recipe" not in text.lower():
        return
    check = check_protocol(runs_frame, None, family)
    if check.differences:
        raise RDError(f"{where} says \"same recipe\", but the compared runs differ: "
                      f"{'; '.join(_grouped(check.differences))}; remove the phrase or compare runs of one recipe")
