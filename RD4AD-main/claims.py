"""Every sentence of the report that states a result, from templates filled from the tables only.

A direction ("higher") or the word "significant" appears only here; tests/test_report.py matches every such
sentence of a report against its tables (primary_tests.csv, aggregate_tests.csv, pairwise_tests_numeric.csv).
"Significant" is said only of a primary question, on the answer the study's claim rests on; every other test
is exploratory.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from comparison import ALPHA, CONFIDENCE, PAIRED_METRICS, Comparison
from decision import CLAIM_BASES, Decision
from interaction import interaction_parts, is_interaction, question_text
from report_tables import count_text, format_p, interval_text, multi_dataset, p_is

__all__ = ["DEFINITIONS", "NOTHING_TO_COMPARE", "aggregate_sentence", "category_test_sentence", "claim_basis_text",
           "conclusions_text", "interaction_sentence", "primary_console_line", "primary_sentence", "tie_lines"]

# Sentences that use a claim word only to define it; everything else with such a word is a checked claim.
DEFINITIONS = (
    "A difference is called significant only for a primary question, when the Holm-adjusted p (Holm within the "
    f"primary family) of the answer the claim rests on is below {ALPHA}.",
    "Every other test is exploratory: its Benjamini-Hochberg-adjusted p (within its own table) points to what a "
    "new study could test and is not a finding.",
    "A p-value without the word significant is not a finding.",
)
NOTHING_TO_COMPARE = "Nothing to compare: no category has runs of both backbones of a pair."


def _group_label(row: Any, multi: bool) -> str:
    return f"{row.dataset} {row.group}" if multi else row.group


def _head(row: Any, multi: bool, family: str) -> str:
    a, b = row.pair.split(" vs ")
    return f"**{_group_label(row, multi)}**, {PAIRED_METRICS[row.metric]}, {a} − {b} ({family})"


def _difference(row: Any, what: str = "mean difference") -> str:
    """The mean difference (``what``: an interaction's is a difference of differences) over categories × seeds."""
    seeds = str(row.seeds)
    return (f"{what} {row.mean_diff * 100:+.2f} points over {count_text(row.n_categories, 'category')} × "
            f"{seeds} seed{'' if seeds == '1' else 's'}")


def _answer(row: Any, answer: str, adjusted: str, adjusted_p: float) -> str:
    """One answer: its interval beside its raw p (the same t statistic), then the adjusted p."""
    p = getattr(row, f"p_{answer}")
    if pd.isna(p):
        return getattr(row, f"note_{answer}") or "not computed"
    low, high = getattr(row, f"ci_low_{answer}"), getattr(row, f"ci_high_{answer}")
    return (f"{CONFIDENCE:.0%} CI {interval_text(low, high)}, t-test p {p_is(p)}, {adjusted}-adjusted p "
            f"{p_is(adjusted_p)}")


def _check(row: Any) -> str:
    if pd.isna(row.p_signed_rank):
        return "signed-rank check not tested (every category tied)"
    return (f"signed-rank check p {p_is(row.p_signed_rank)} ({row.signed_rank_method}; smallest reachable "
            f"{format_p(row.min_reachable_p_signed_rank)})")


def _tally(row: Any, a_side: str, b_side: str) -> str:
    """How many categories favour each side, then the ties, out of all categories (a pair's and an interaction's)."""
    ties = row.n_categories - row.wins_a - row.wins_b
    total = count_text(row.n_categories, "category")
    return f"{a_side} in {row.wins_a}, {b_side} in {row.wins_b}" + (
        f", tied in {ties} of {total}" if ties else f" of {total}")


def _wins(row: Any) -> str:
    """The categories on each side, and a warning when the mean and the majority of categories disagree."""
    a, b = row.pair.split(" vs ")
    text = _tally(row, f"{a} higher", f"{b} higher")
    mean_side = a if row.mean_diff > 0 else b if row.mean_diff < 0 else None
    most_side = a if row.wins_a > row.wins_b else b if row.wins_b > row.wins_a else None
    if mean_side and most_side and mean_side != most_side:
        text += f"; the mean says {mean_side} higher, most categories say {most_side} higher"
    return text + "."


def claim_basis_text(decision: Decision) -> str:
    """The report's opening statement of what the study's claim rests on (before any result)."""
    where = f"{decision.source} \"claim_basis\"" if decision.source else "the default claim_basis"
    questions = "declared in " + f"{decision.source} \"primary\"" if decision.declared else \
        "the default: each compared pair on overall image AUROC, pixel AUROC and AUPRO"
    return (f"**Claim basis: {CLAIM_BASES[decision.claim_basis]}** ({where}: \"{decision.claim_basis}\"). The study "
            f"answers {count_text(len(decision.primary), 'primary question')} ({questions}); the other answer is "
            "shown beside it for information only.")


def _verdict(row: Any, direction: str) -> str:
    """The verdict on the claim basis: ``significant (<direction>)``, not significant, or not tested."""
    basis = row.p_fixed_holm if row.claim_basis == "fixed-categories" else row.p_new_holm
    if pd.isna(basis):
        return "not tested"
    return f"significant ({direction})" if row.significant else "not significant"


def _answers(row: Any, correction: str = "Holm") -> str:
    """Both answers, each with its p adjusted by ``correction`` (Holm: primary, BH: exploratory), and the check."""
    fixed = _answer(row, "fixed", correction, getattr(row, f"p_fixed_{correction.lower()}"))
    new = _answer(row, "new", correction, getattr(row, f"p_new_{correction.lower()}"))
    return f"on these categories: {fixed}; to new categories: {new}; {_check(row)}"


def primary_sentence(row: Any, multi: bool = False) -> str:
    """One primary question's two answers and the verdict on the claim basis, from primary_tests.csv only. The
    direction of a significant verdict is the sign of the claim basis's estimate (the mean over categories)."""
    if is_interaction(row.pair):
        return interaction_sentence(row, multi)
    a, b = row.pair.split(" vs ")
    head = _head(row, multi, "primary")
    if pd.isna(row.mean_diff):
        return f"{head}: not averaged ({row.note})."
    verdict = _verdict(row, f"{a if row.mean_diff > 0 else b} higher on average")
    return (f"{head}: {_difference(row)}; {_answers(row)}. On the claim basis ({CLAIM_BASES[row.claim_basis]}): "
            f"{verdict}; {_wins(row)}")


def interaction_sentence(row: Any, multi: bool = False) -> str:
    """An interaction's two answers and its verdict, from primary_tests.csv only: the difference of differences
    (a − b under one method) − (a − b under the other), and under which method a − b is larger (the sign of the
    mean over categories; when most categories point the other way, the sentence says so)."""
    (a, b), (first, second) = interaction_parts(row.pair)
    head = (f"**{_group_label(row, multi)}**, {PAIRED_METRICS[row.metric]}, {question_text(row.pair)} (primary, "
            f"interaction: does {a} − {b} differ between {first} and {second}?)")
    if pd.isna(row.mean_diff):
        return f"{head}: not averaged ({row.note})."
    larger = lambda method: f"{a} − {b} larger under {method}"  # noqa: E731
    mean_side = first if row.mean_diff > 0 else second
    verdict = _verdict(row, f"{larger(mean_side)} than under {second if mean_side == first else first} on average")
    wins = _tally(row, larger(first), f"under {second}")
    most_side = first if row.wins_a > row.wins_b else second if row.wins_b > row.wins_a else None
    if row.mean_diff and most_side and most_side != mean_side:
        wins += f"; the mean says larger under {mean_side}, most categories say under {most_side}"
    return (f"{head}: {_difference(row, 'mean difference of differences')}; {_answers(row)}. On the claim basis "
            f"({CLAIM_BASES[row.claim_basis]}): {verdict}; {wins}.")


def primary_console_line(row: Any) -> str:
    """The console's one line per primary question: each interval beside its own raw p, then the Holm p."""
    verdict = "significant" if row.significant else "not significant"
    return (f"  {question_text(row.pair)}, {row.group}, {PAIRED_METRICS[row.metric]}: {row.mean_diff * 100:+.2f} "
            f"points; on these categories CI {interval_text(row.ci_low_fixed, row.ci_high_fixed)} "
            f"p {format_p(row.p_fixed)} p_holm {format_p(row.p_fixed_holm)}; to new categories CI "
            f"{interval_text(row.ci_low_new, row.ci_high_new)} p {format_p(row.p_new)} "
            f"p_holm {format_p(row.p_new_holm)}; {CLAIM_BASES[row.claim_basis]}: {verdict}")


def aggregate_sentence(row: Any, multi: bool = False) -> str:
    """What one exploratory test over categories says, from aggregate_tests.csv only (no verdict)."""
    head = _head(row, multi, "exploratory")
    if pd.isna(row.mean_diff):
        return f"{head}: not averaged ({row.note})."
    return f"{head}: {_difference(row)}; {_answers(row, 'BH')}; {_wins(row)}"


def category_test_sentence(row: Any) -> str:
    """A per-category test whose BH-adjusted p is below ALPHA (an exploratory lead), from
    pairwise_tests_numeric.csv."""
    winner = row.backbone_a if row.difference > 0 else row.backbone_b
    return (f"**{row.category}**, seed {row.seed}, {PAIRED_METRICS[row.metric]}, {row.backbone_a} − "
            f"{row.backbone_b}: {row.difference * 100:+.2f} points ({row.test}, BH-adjusted p {p_is(row.p_bh)}; "
            f"exploratory lead: {winner} higher).")


def tie_lines(tests: pd.DataFrame) -> list[str]:
    """The per-category tests skipped for a tie (both perfect, or identical), each with its reason."""
    ties = tests[tests["note"].str.startswith(("tie at the ceiling", "identical"))]
    return [f"**{row.category}**, seed {row.seed}, {PAIRED_METRICS[row.metric]}, {row.backbone_a} − "
            f"{row.backbone_b}: not tested, {row.note}." for row in ties.itertuples()]


def conclusions_text(comparison: Comparison, decision: Decision, runs_frame: pd.DataFrame) -> str:
    """The conclusions: the primary answers, then the exploratory tests over categories, then the per-category
    leads (BH within their table), then the ties."""
    if comparison.tests.empty and comparison.aggregate["mean_diff"].isna().all():
        return NOTHING_TO_COMPARE
    multi = multi_dataset(runs_frame)
    exploratory = comparison.aggregate[comparison.aggregate["family"] == "exploratory"]
    out = ["Primary questions (the study's answer):",
           "\n".join(f"- {primary_sentence(row, multi)}" for row in decision.primary.itertuples())]
    if not exploratory.empty:
        out += ["Exploratory, over categories (Benjamini-Hochberg within this list):",
                "\n".join(f"- {aggregate_sentence(row, multi)}" for row in exploratory.itertuples())]
    tested = comparison.tests.dropna(subset=["p_bh"])
    leads = tested[tested["p_bh"] < ALPHA]
    out.append(f"Per category and seed (exploratory): {len(leads)} of {len(tested)} tests have a "
               f"Benjamini-Hochberg-adjusted p below {ALPHA} (false-discovery rate within this table).")
    if not leads.empty:
        out.append("\n".join(f"- {category_test_sentence(row)}" for row in leads.itertuples()))
    ties = tie_lines(comparison.tests)
    if ties:
        out += ["Ties (skipped, with the reason):", "\n".join(f"- {line}" for line in ties)]
    return "\n\n".join(out)
