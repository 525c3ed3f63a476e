"""The interaction question of a study with two methods: is a backbone difference under one method different from
the same difference under the other (issue 26: does the ResNet -> ConvNeXt shift survive RD++)?

A study config declares it in its "primary" list as ``{"interaction": {"backbones": [a, b], "methods": [m1, m2]},
"metric": ..., "group": ...}``. Its four arms are a and b under each method (backbone_facts.arm_label: ``a+m1``,
``b+m1``, ``a+m2``, ``b+m2``; an RD4AD arm is the bare backbone). A cell is a (category, seed) pair all four arms ran
with the metric measured, and its difference is the difference of the two pairs' differences,
(a − b under m1) − (a − b under m2) (inference.contrast_cells): positive when a − b is larger under m1. The cells are
answered by inference.answer_cells like a pair's (both answers, the signed-rank check), and decision.py puts the
answer in the primary family beside the pair questions (Holm over all of them). Tables name the question by its
label, "(a+m1 vs b+m1) vs (a+m2 vs b+m2)": one pair's label ("a vs b", a − b) against the other's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from backbone_facts import ARM_SEPARATOR, METHODS, arm_label, method_label, split_arm
from comparison import ARM, OVERALL, answer_row, pair_label
from errors import RDError
from inference import Answers, answer_cells, contrast_cells, paired_cells, seed_list_text

__all__ = ["INTERACTION", "INTERACTION_KEYS", "InteractionQuestion", "answer_interaction", "compare_interaction",
           "interaction_cells", "interaction_parts", "is_interaction", "label_arms", "parse_interaction",
           "question_text"]

INTERACTION = "interaction"  # the key of a "primary" entry that declares one
INTERACTION_KEYS = {INTERACTION, "metric", "group"}
_OPEN, _CLOSE, _VS = "(", ")", " vs "


@dataclass(frozen=True)
class InteractionQuestion:
    """Is metric(a) − metric(b) under methods[0] different from metric(a) − metric(b) under methods[1]?"""

    backbones: tuple[str, str]
    methods: tuple[str, str]
    metric: str
    group: str = OVERALL

    @property
    def pairs(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """The backbone pair under each method, as arm labels: ((a+m1, b+m1), (a+m2, b+m2))."""
        a, b = self.backbones
        first, second = ((arm_label(a, method), arm_label(b, method)) for method in self.methods)
        return first, second

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(arm for pair in self.pairs for arm in pair)

    @property
    def key(self) -> tuple[str, str, str]:
        """(label, group, metric): how the primary table names it."""
        first, second = self.pairs
        return f"{_OPEN}{pair_label(first)}{_CLOSE}{_VS}{_OPEN}{pair_label(second)}{_CLOSE}", self.group, self.metric


def _two_names(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) and v for v in value) \
        and value[0] != value[1]


def parse_interaction(value: Any, where: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The ``"interaction"`` object of a primary entry: (backbones, methods); an RDError naming ``where`` otherwise.
    Backbones are registered names without a method suffix (the methods say which arms)."""
    expected = '{"backbones": [a, b], "methods": [m1, m2]} (e.g. {"backbones": ["resnet50_v2", "convnext_tiny"], ' \
        '"methods": ["rdpp", "rd"]})'
    if not isinstance(value, dict) or set(value) != {"backbones", "methods"}:
        raise RDError(f"{where} \"{INTERACTION}\": expected {expected}, got {value!r}")
    backbones, methods = value["backbones"], value["methods"]
    if not _two_names(backbones) or any(ARM_SEPARATOR in name for name in backbones):
        raise RDError(f"{where} \"{INTERACTION}\" \"backbones\": expected two different backbones without a "
                      f"{ARM_SEPARATOR}method suffix (the methods come from \"methods\"), got {backbones!r}")
    if not _two_names(methods) or any(method not in METHODS for method in methods):
        raise RDError(f"{where} \"{INTERACTION}\" \"methods\": expected two different methods of "
                      f"{', '.join(METHODS)} (the difference under the first minus under the second), got {methods!r}")
    return (backbones[0], backbones[1]), (methods[0], methods[1])


# ----------------------------------------------------------------------------------------------------
# labels: "a vs b" is a pair (a − b); "(a1 vs b1) vs (a2 vs b2)" an interaction ((a1 − b1) − (a2 − b2))
# ----------------------------------------------------------------------------------------------------
def is_interaction(label: str) -> bool:
    return label.startswith(_OPEN) and label.endswith(_CLOSE)


def _pairs_of(label: str) -> tuple[tuple[str, str], ...]:
    """The pairs a label names: one for a pair, two for an interaction."""
    parts = label[1:-1].split(f"{_CLOSE}{_VS}{_OPEN}") if is_interaction(label) else [label]
    return tuple(tuple(part.split(_VS)) for part in parts)  # type: ignore[misc]


def label_arms(label: str) -> tuple[str, ...]:
    """The arms a pair or interaction label names."""
    return tuple(arm for pair in _pairs_of(label) for arm in pair)


def question_text(label: str) -> str:
    """How sentences and tables write the difference: "a − b", or "(a1 − b1) − (a2 − b2)"."""
    pairs = [" − ".join(pair) for pair in _pairs_of(label)]
    return pairs[0] if len(pairs) == 1 else " − ".join(f"({pair})" for pair in pairs)


def interaction_parts(label: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(backbones, method labels) of an interaction label: (("a", "b"), ("RD++", "RD4AD"))."""
    (a, b), (c, _) = _pairs_of(label)
    return (split_arm(a)[0], split_arm(b)[0]), (method_label(split_arm(a)[1]), method_label(split_arm(c)[1]))


# ----------------------------------------------------------------------------------------------------
# cells and answers
# ----------------------------------------------------------------------------------------------------
def _seeds_text(cells: pd.DataFrame, category: str) -> str:
    return seed_list_text(cells.loc[cells["category"] == category, "seed"])


def interaction_cells(runs: pd.DataFrame, question: InteractionQuestion, categories: list[str] | None = None,
                      arm: str = ARM) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """The (category, seed) cells all four arms ran with the metric measured, each (a − b under m1) − (a − b under
    m2); the categories without a cell, with the reason; the runs left out (a seed another arm lacks), named."""
    sides = [paired_cells(runs, *pair, question.metric, arm, categories) for pair in question.pairs]
    (first, excluded_1, unpaired_1), (second, excluded_2, unpaired_2) = sides
    cells = contrast_cells(first, second)
    names = [method_label(method) for method in question.methods]
    wanted = list(categories) if categories is not None else sorted(set(first["category"]) | set(second["category"])
                                                                    | set(excluded_1) | set(excluded_2))
    excluded, unpaired = {}, {}
    for category in wanted:
        reasons = [f"under {name}: {why[category]}" for name, why in zip(names, (excluded_1, excluded_2))
                   if category in why]
        alone = [f"under {name}: {why[category]}" for name, why in zip(names, (unpaired_1, unpaired_2))
                 if category in why]
        if category in set(cells["category"]):
            lacking = [f"under {name}: {' and '.join(pair)} seed {seed} (the other method's pair lacks that seed)"
                       for name, pair, side, other in zip(names, question.pairs, (first, second), (second, first))
                       for seed in sorted(set(side.loc[side["category"] == category, "seed"])
                                          - set(other.loc[other["category"] == category, "seed"]))]
            if alone or lacking:
                unpaired[str(category)] = "; ".join(alone + lacking)
            continue
        if not reasons:
            reasons = [f"no seed all four arms ran ({names[0]} pair: seeds {_seeds_text(first, category)}; "
                       f"{names[1]} pair: seeds {_seeds_text(second, category)})"]
        excluded[str(category)] = "; ".join(reasons)
    return cells, excluded, unpaired


def compare_interaction(runs: pd.DataFrame, question: InteractionQuestion, categories: list[str] | None = None,
                        arm: str = ARM) -> Answers:
    """Both answers to the interaction from a tidy runs table (columns ``arm``, category, seed and the metric)."""
    cells, excluded, unpaired = interaction_cells(runs, question, categories, arm)
    return answer_cells(cells, excluded=excluded, unpaired=unpaired)


def answer_interaction(runs_frame: pd.DataFrame, question: InteractionQuestion, dataset: str, group: str,
                       categories: list[str]) -> dict[str, Any]:
    """One interaction, dataset and group answered as a primary table row: label, inference.answer_columns (wins_a:
    categories where a − b is larger under the first method) and the unfinished flags of its runs."""
    frame = runs_frame[runs_frame["dataset"] == dataset]
    answers = compare_interaction(frame, question, categories)
    label, _, metric = question.key
    return answer_row(frame, question.arms, answers, (label, group, metric, dataset))
