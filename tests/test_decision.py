"""The decision rule (decision.py): primary questions from the config, the two answers, Holm within the primary
family only, the null behaviour of the fixed-categories test, and the planning table."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import decision
import report
import significance
from backbones import FAIR_PAIR
from comparison import cell_differences
from errors import RDError
from fake_results import write_fake_results

SIX = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut")


def write_config(path: Path, **values: object) -> Path:
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def six_by_three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 categories x 3 seeds of the fair pair plus wide_resnet50_2, ConvNeXt's defects scoring much higher."""
    root = tmp_path_factory.mktemp("six")
    return write_fake_results(root, backbones=(*FAIR_PAIR, "wide_resnet50_2"), categories=SIX, seeds=(0, 1, 2),
                              separation={"resnet50": 0.6, "convnext_tiny": 2.0, "wide_resnet50_2": 1.0})


@pytest.fixture(scope="module")
def fair_report(six_by_three: Path) -> report.Report:
    """The fair pair of the study, default primary questions and claim basis."""
    return report.build_report(six_by_three, [FAIR_PAIR], n_boot=50)


# ---------------------------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("differences", [[0.3, -0.1, 0.2, 0.05, 0.4], [0.1, 0.1, -0.1, 0.0], [1.0, 2.0, 3.0]])
def test_sign_flip_enumerates_every_pattern(differences: list[float]) -> None:
    observed = abs(sum(differences))
    sums = [abs(sum(s * d for s, d in zip(signs, differences)))
            for signs in itertools.product((1, -1), repeat=len(differences))]
    expected = np.mean([value >= observed - 1e-12 for value in sums])
    result = significance.sign_flip_test(differences)
    assert result.exact and result.p_value == pytest.approx(expected, abs=1e-15)
    assert result.min_p == 2.0 / 2 ** len(differences)


def test_sign_flip_draws_above_the_exact_limit() -> None:
    d = np.full(significance.EXACT_FLIP_CELLS + 4, 0.1)  # every sign alike: the exact p would be 2 / 2^20
    result = significance.sign_flip_test(d, n_draws=999, rng=np.random.default_rng(1))
    assert not result.exact and result.p_value == result.min_p == 1.0 / 1000  # only the observed pattern counts
    mixed = np.r_[d[:10], -d[10:]]  # sum 0: every pattern is at least as extreme
    assert significance.sign_flip_test(mixed, n_draws=99).p_value == 1.0


def test_benjamini_hochberg_by_hand() -> None:
    p = pd.Series([0.01, 0.04, np.nan, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.02, 0.04, 0.04 after the running minimum from the top
    adjusted = significance.benjamini_hochberg(p)
    assert adjusted.tolist()[:2] + adjusted.tolist()[3:] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjusted.iloc[2])


def _aurocs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every row of ``scores`` (..., N) against one label vector (ties 1/2), by ranks."""
    ranks = stats.rankdata(scores, axis=-1)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return (ranks[..., labels].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _fabricated_cells(rng: np.random.Generator, shift: float) -> np.ndarray:
    """(6, 3) image-AUROC differences a - b of fabricated runs: per category a test set (15 normal, 10 defective)
    with its own difficulty, per image a difficulty shared by both backbones, per run (seed) its own skill; b's
    defects score ``shift`` higher (0: the backbones are exchangeable)."""
    labels = np.r_[np.zeros(15, bool), np.ones(10, bool)]
    category = rng.uniform(0.5, 1.5, size=(6, 1, 1, 1))
    image = rng.normal(0, 0.7, size=(6, 1, 1, labels.size))
    skill = rng.normal(1.0, 0.3, size=(6, 3, 2, 1))
    scores = image + labels * category * skill + rng.normal(0, 0.8, size=(6, 3, 2, labels.size))
    scores[:, :, 1] += shift * labels
    auroc = _aurocs(scores, labels)
    return auroc[:, :, 0] - auroc[:, :, 1]


def _rejection_rate(shift: float, repetitions: int, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    question = decision.PrimaryQuestion(FAIR_PAIR, "image_auroc")
    rejected = sum(decision.fixed_categories_test(_fabricated_cells(rng, shift), question, n_draws=399).p_value
                   < 0.05 for _ in range(repetitions))
    return rejected, repetitions


def test_exchangeable_backbones_are_rejected_at_most_five_percent() -> None:
    rejected, n = _rejection_rate(0.0, 400, seed=11)
    lower = stats.beta.ppf(0.05, rejected, n - rejected + 1) if rejected else 0.0  # one-sided 95 % Clopper-Pearson
    assert lower <= 0.05, f"{rejected} of {n} rejected"
    power, m = _rejection_rate(0.8, 100, seed=12)  # and the same test finds a real difference
    assert power / m > 0.8


# ---------------------------------------------------------------------------------------------- the report


def test_a_consistent_six_zero_difference_is_significant_on_these_categories(six_by_three: Path, tmp_path: Path,
                                                                              fair_report: report.Report) -> None:
    rep = fair_report
    primary = rep.decision.primary.set_index("metric")
    assert len(primary) == 3 and set(primary["claim_basis"]) == {"fixed-categories"}
    row = primary.loc["pixel_auroc"]
    assert (row["wins_a"], row["wins_b"], row["n_categories"], row["n_seeds"]) == (0, 6, 6, 3)
    assert row["ci_high"] < 0  # the interval excludes 0
    assert row["p_fixed"] == pytest.approx(1 / (1 + decision.N_PERMUTATIONS))  # no drawn pattern is as extreme
    assert row["p_fixed_holm"] == pytest.approx(3 * row["p_fixed"]) and bool(row["significant"])
    assert row["p_wilcoxon"] == pytest.approx(1 / 32) == row["min_reachable_p_wilcoxon"]
    assert row["p_wilcoxon_holm"] == pytest.approx(3 / 32)  # to new categories: cannot pass Holm with 6 categories
    sentence = next(line for line in report.conclusions_markdown(rep).splitlines() if "pixel AUROC, resnet50" in line)
    assert "On the claim basis (on these categories): significant (convnext_tiny higher)" in sentence
    config = write_config(tmp_path / "new.json", claim_basis="new-categories")
    other = report.build_report(six_by_three, [FAIR_PAIR], n_boot=20, config=config).decision.primary
    assert not other["significant"].any()  # the same data never called significant on the other basis
    assert other["p_fixed_holm"].tolist() == rep.decision.primary["p_fixed_holm"].tolist()


def test_more_pairs_and_tables_leave_a_declared_primary_answer_unchanged(six_by_three: Path, tmp_path: Path,
                                                                       fair_report: report.Report) -> None:
    config = write_config(tmp_path / "study.json", pairs=[list(FAIR_PAIR)],
                          primary=[{"pair": list(FAIR_PAIR), "metric": "pixel_auroc"},
                                   {"pair": list(FAIR_PAIR), "metric": "aupro", "group": "texture"}])
    one = report.build_report(six_by_three, n_boot=20, config=config)
    more = report.build_report(six_by_three, [FAIR_PAIR, ("resnet50", "wide_resnet50_2")], n_boot=20, config=config)
    assert len(more.comparison.aggregate) == 2 * len(one.comparison.aggregate)  # more exploratory rows and tests
    assert len(more.comparison.tests) == 2 * len(one.comparison.tests)
    columns = ["pair", "group", "metric", "p_fixed", "p_fixed_holm", "p_wilcoxon_holm", "significant"]
    pd.testing.assert_frame_equal(one.decision.primary[columns], more.decision.primary[columns])
    assert one.decision.primary["group"].tolist() == ["overall", "texture"]
    # without declared questions the default family grows with the pairs: the check above can fail
    default_more = report.build_report(six_by_three, [FAIR_PAIR, ("resnet50", "wide_resnet50_2")],
                                       n_boot=20).decision.primary
    assert default_more["p_fixed_holm"].iloc[0] > fair_report.decision.primary["p_fixed_holm"].iloc[0]
    exploratory = more.comparison.aggregate.query("family == 'exploratory'")
    assert len(exploratory) == len(more.comparison.aggregate) - 2
    assert exploratory["p_bh"].equals(significance.benjamini_hochberg(exploratory["p_wilcoxon"]))


def test_primary_tests_csv_and_console(fair_report: report.Report, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.write_report(fair_report, out, figures=[])
    frame = pd.read_csv(out / "tables" / "primary_tests.csv")
    assert list(frame.columns[:14]) == ["pair", "metric", "group", "n_categories", "n_seeds", "mean_diff", "ci_low",
                                        "ci_high", "p_fixed", "p_fixed_holm", "p_wilcoxon",
                                        "min_reachable_p_wilcoxon", "claim_basis", "significant"]
    assert frame["significant"].tolist() == fair_report.decision.primary["significant"].tolist()
    lines = report.headline_console(fair_report).splitlines()
    assert lines[0].startswith("Primary questions") and "claim basis: on these categories" in lines[0]
    assert all(line.startswith("  resnet50 − convnext_tiny, overall, ") and line.endswith(
        "on these categories: significant") for line in lines[1:4])  # one line per primary question, first
    assert lines[4].startswith("Exploratory:")
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.index("**Claim basis: on these categories**") < text.index("## Primary questions")


@pytest.mark.parametrize("values, message", [
    ({"claim_basis": "everything"}, r"\"claim_basis\": expected one of 'fixed-categories', 'new-categories'"),
    ({"primary": []}, r"\"primary\": expected a non-empty list"),
    ({"primary": [{"pair": ["resnet50", "convnext_tiny"], "metric": "f1"}]}, r"\"primary\"\[0\] \"metric\""),
    ({"primary": [{"pair": "resnet50", "metric": "aupro"}]}, r"\"primary\"\[0\] \"pair\""),
    ({"primary": [{"pair": ["resnet50", "convnext_tiny"], "metric": "aupro", "seed": 0}]}, r"\"primary\"\[0\]"),
    ({"primary": [{"pair": ["convnext_tiny", "resnet50"], "metric": "aupro"}]}, r"pair convnext_tiny,resnet50 is not"),
    ({"primary": [{"pair": ["resnet50", "convnext_tiny"], "metric": "aupro", "group": "fabric"}]},
     r"group 'fabric' has no runs here; groups: object, overall, texture"),
])
def test_a_bad_config_is_one_clear_error(six_by_three: Path, tmp_path: Path, values: dict, message: str) -> None:
    config = write_config(tmp_path / "bad.json", pairs=[list(FAIR_PAIR)], **values)
    with pytest.raises(RDError, match=message) as error:
        report.build_report(six_by_three, n_boot=10, config=config)
    assert str(config) in str(error.value)


# ---------------------------------------------------------------------------------------------- planning


def test_planning_by_hand() -> None:
    cells = np.array([[0.10, 0.20, 0.30], [0.00, 0.10, 0.20], [0.20, 0.20, 0.20], [0.10, 0.30, 0.20],
                      [0.30, 0.10, 0.20]])
    image_var = np.full(5, 0.0004)
    plan = decision.detectable_differences(cells, image_var, n_questions=2)
    seed_var = np.array([0.01, 0.01, 0.0, 0.01, 0.01])  # sample variances over the three seeds
    z = stats.norm.ppf(1 - 0.05 / 4) + stats.norm.ppf(0.8)
    for seeds in (3, 5):
        assert plan["fixed"][seeds] == pytest.approx(z * np.sqrt((seed_var / seeds + 0.0004).sum()) / 5)
    assert np.isnan(plan["fixed"][1])  # 5 cells: the smallest sign-flip p, 2 / 32, is above 0.05 / 2
    assert plan["fixed"][3] > plan["fixed"][5]
    assert all(np.isnan(value) for value in plan["new"].values())  # 5 categories: Wilcoxon's smallest p is 1/16
    wide = decision.detectable_differences(np.tile(cells, (2, 1)) + np.repeat([0.0, 0.5], 5)[:, None],
                                           np.full(10, 0.0004), n_questions=1)
    averaged = (np.tile(cells, (2, 1)) + np.repeat([0.0, 0.5], 5)[:, None]).mean(axis=1)
    tau2 = np.var(averaged, ddof=1) - np.mean(np.tile(seed_var, 2) / 3 + 0.0004)
    assert wide["category_sd"] == pytest.approx(np.sqrt(tau2))
    z1 = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert wide["new"][5] == pytest.approx(
        z1 * np.sqrt((tau2 + np.mean(np.tile(seed_var, 2) / 5 + 0.0004)) / 10) / np.sqrt(3 / np.pi))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json")),
                         ids=lambda path: path.stem)
def test_every_preset_declares_a_valid_plan(path: Path) -> None:
    plan = decision.read_study_plan(path)
    questions = plan.primary if plan.primary is not None else decision.default_primary(plan.pairs or [])
    assert set(q.pair for q in questions) <= set(plan.pairs or [])  # a preset without pairs: compare's default
    assert plan.claim_basis in decision.CLAIM_BASES
    if path.stem == "full_study":
        assert [q.key for q in questions] == [("resnet50 vs convnext_tiny", "overall", m)
                                              for m in ("image_auroc", "pixel_auroc", "aupro")]


def test_the_planning_table_says_why_a_level_is_out_of_reach(fair_report: report.Report) -> None:
    planning = fair_report.decision.planning.set_index(["metric", "answer"])
    fixed = planning.loc[("aupro", "on these categories")]
    assert np.isnan(fixed["detectable_1_seed"]) and fixed["detectable_3_seeds"] > fixed["detectable_5_seeds"] > 0
    assert fixed["note"] == "cannot reach p < 0.0167 with 1 seed: 6 cells, smallest sign-flip p 0.0312"
    new = planning.loc[("aupro", "to new categories")]
    assert np.isnan(new[["detectable_1_seed", "detectable_3_seeds", "detectable_5_seeds"]].astype(float)).all()
    assert "6 categories (smallest Wilcoxon p 0.0312)" in new["note"]
    assert fixed["seed_sd"] == pytest.approx(np.sqrt(np.mean(
        cell_differences(fair_report.runs, FAIR_PAIR, list(SIX), "aupro")[2].var(axis=1, ddof=1))))
