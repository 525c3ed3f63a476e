"""The decision rule (decision.py): primary questions from the config, the two answers, Holm within the primary
family only, the null behaviour of the fixed-categories answer, seeds as they come through the real report path, and
the planning table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import decision
import inference
import planning
import report
import significance
from backbones import FAIR_PAIR
from comparison import pair_cells
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
    cells = np.stack([_fabricated_cells(rng, shift) for _ in range(repetitions)])
    return int((inference.fixed_arrays(cells).p_value < 0.05).sum()), repetitions


def test_exchangeable_backbones_are_rejected_at_most_five_percent() -> None:
    rejected, n = _rejection_rate(0.0, 400, seed=11)
    lower = stats.beta.ppf(0.05, rejected, n - rejected + 1) if rejected else 0.0  # one-sided 95 % Clopper-Pearson
    assert lower <= 0.05, f"{rejected} of {n} rejected"
    power, m = _rejection_rate(0.8, 100, seed=12)  # and the same answer finds a real difference
    assert power / m > 0.8


# ---------------------------------------------------------------------------------------------- the report


def test_a_consistent_six_zero_difference_is_significant_on_these_categories(six_by_three: Path, tmp_path: Path,
                                                                              fair_report: report.Report) -> None:
    rep = fair_report
    primary = rep.decision.primary.set_index("metric")
    assert len(primary) == 3 and set(primary["claim_basis"]) == {"fixed-categories"}
    row = primary.loc["pixel_auroc"]
    assert (row["wins_a"], row["wins_b"], row["n_categories"], row["n_cells"], row["seeds"]) == (0, 6, 6, 18, "3")
    assert row["ci_high_fixed"] < 0 and row["p_fixed"] < 0.05  # the interval excludes 0 with its p below 0.05
    assert row["p_fixed_holm"] == pytest.approx(significance.holm(primary["p_fixed"])["pixel_auroc"])
    assert bool(row["significant"]) and row["p_fixed_holm"] < 0.05
    cells, _ = pair_cells(rep.runs, FAIR_PAIR, list(SIX), "pixel_auroc")
    means = cells.groupby("category")["difference"].mean().to_numpy()
    assert row["p_new"] == pytest.approx(stats.ttest_1samp(means, 0.0).pvalue)
    assert row["p_signed_rank"] == pytest.approx(1 / 32) == row["min_reachable_p_signed_rank"]
    sentence = next(line for line in report.conclusions_markdown(rep).splitlines() if "pixel AUROC, resnet50" in line)
    assert "On the claim basis (on these categories): significant (convnext_tiny higher on average)" in sentence
    config = write_config(tmp_path / "new.json", claim_basis="new-categories")
    other = report.build_report(six_by_three, [FAIR_PAIR], n_boot=20, config=config).decision.primary
    assert other["significant"].tolist() == (other["p_new_holm"] < 0.05).tolist()  # the other basis decides
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
    columns = ["pair", "group", "metric", "p_fixed", "p_fixed_holm", "p_new_holm", "significant"]
    pd.testing.assert_frame_equal(one.decision.primary[columns], more.decision.primary[columns])
    assert one.decision.primary["group"].tolist() == ["overall", "texture"]
    # without declared questions the default family grows with the pairs: the check above can fail
    default_more = report.build_report(six_by_three, [FAIR_PAIR, ("resnet50", "wide_resnet50_2")],
                                       n_boot=20).decision.primary
    assert default_more["p_fixed_holm"].iloc[0] > fair_report.decision.primary["p_fixed_holm"].iloc[0]
    exploratory = more.comparison.aggregate.query("family == 'exploratory'")
    assert len(exploratory) == len(more.comparison.aggregate) - 2
    assert exploratory["p_new_bh"].equals(significance.benjamini_hochberg(exploratory["p_new"]))


def test_primary_tests_csv_and_console(fair_report: report.Report, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.write_report(fair_report, out, figures=[])
    frame = pd.read_csv(out / "tables" / "primary_tests.csv")
    assert list(frame.columns[:17]) == ["pair", "metric", "group", "n_categories", "n_cells", "seeds", "mean_diff",
                                        "ci_low_fixed", "ci_high_fixed", "p_fixed", "p_fixed_holm", "ci_low_new",
                                        "ci_high_new", "p_new", "p_new_holm", "claim_basis", "significant"]
    assert frame["significant"].tolist() == fair_report.decision.primary["significant"].tolist()
    lines = report.headline_console(fair_report).splitlines()
    assert lines[0].startswith("Primary questions") and "claim basis: on these categories" in lines[0]
    assert all(line.startswith("  resnet50 − convnext_tiny, overall, ") and line.endswith(
        "on these categories: significant") for line in lines[1:4])  # one line per primary question, first
    assert lines[4].startswith("Exploratory:")
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.index("**Claim basis: on these categories**") < text.index("## Primary questions")


def test_the_default_family_stays_three_questions_beside_the_new_exploratory_metrics(
        fair_report: report.Report) -> None:
    """The new paired metrics are exploratory: the default primary answers are those of the three-metric family."""
    primary = fair_report.decision.primary
    assert primary["metric"].tolist() == list(decision.DEFAULT_PRIMARY_METRICS) == ["image_auroc", "pixel_auroc",
                                                                                     "aupro"]
    alone = inference.question_table(fair_report.runs, [(*FAIR_PAIR, metric) for metric in primary["metric"]],
                                     arm="backbone")
    columns = ["mean_diff", "ci_low_fixed", "ci_high_fixed", "p_fixed", "p_fixed_holm", "p_new", "p_new_holm",
               "significant"]
    pd.testing.assert_frame_equal(primary[columns].reset_index(drop=True), alone[columns], check_dtype=False)
    aggregate = fair_report.comparison.aggregate
    new = aggregate[aggregate["metric"].isin(["aupro_5pct", "aupimo", "seg_f1"])]
    assert len(new) == 3 * 3 and set(new["family"]) == {"exploratory"}  # texture, object, overall
    exploratory = aggregate[aggregate["family"] == "exploratory"]
    assert exploratory["p_fixed_bh"].equals(significance.benjamini_hochberg(exploratory["p_fixed"]))


def test_a_declared_aupimo_question_is_answered(six_by_three: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "study.json", pairs=[list(FAIR_PAIR)],
                          primary=[{"pair": list(FAIR_PAIR), "metric": "aupimo"},
                                   {"pair": list(FAIR_PAIR), "metric": "image_auroc"}])
    rep = report.build_report(six_by_three, n_boot=10, config=config)
    primary = rep.decision.primary.set_index("metric")
    answers = inference.compare_arms(rep.runs, *FAIR_PAIR, "aupimo", arm="backbone")
    row = primary.loc["aupimo"]
    assert row["p_fixed"] == pytest.approx(answers.fixed.p_value) and row["n_categories"] == 6
    assert row["p_fixed_holm"] == pytest.approx(significance.holm(primary["p_fixed"])["aupimo"])
    aggregate = rep.comparison.aggregate.set_index(["group", "metric"])
    assert aggregate.at[("overall", "aupimo"), "family"] == "primary"
    assert aggregate.at[("overall", "pixel_auroc"), "family"] == "exploratory"  # not declared: exploratory now
    text = report.conclusions_markdown(rep)
    assert "**overall**, AUPIMO (mean), resnet50 − convnext_tiny (primary): mean difference" in text
    images = rep.images.set_index("category")  # and the per-image table answers every category
    assert set(images.index) == {*SIX, "overall"} and images["p_value"].notna().all()


@pytest.mark.parametrize("values, message", [
    ({"claim_basis": "everything"}, r"\"claim_basis\": expected one of 'fixed-categories', 'new-categories'"),
    ({"primary": []}, r"\"primary\": expected a non-empty list"),
    ({"primary": [{"pair": ["resnet50", "convnext_tiny"], "metric": "f1"}]},
     r"\"primary\"\[0\] \"metric\": expected one of image_auroc, pixel_auroc, aupro, aupro_5pct, aupimo, seg_f1, spro"),
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


def test_planning_simulation_agrees_with_the_noncentral_t() -> None:
    """The planning table simulates the answers' own tests; where a formula is exact (Student's t over normal
    categories; equal seed variances with the pooled degrees of freedom as a bound) the two agree."""
    rng = np.random.default_rng(0)
    alpha, categories = 0.05 / 3, 9
    components = planning.Components(np.full(categories, 0.004 ** 2), 0.01 ** 2)
    delta = planning.detectable("new-categories", components, 3, alpha, 0.8, rng)
    se = np.sqrt((0.01 ** 2 + 0.004 ** 2 / 3) / categories)
    df = categories - 1
    q = stats.t.ppf(1 - alpha / 2, df)
    power = stats.nct.sf(q, df, delta / se) + stats.nct.cdf(-q, df, delta / se)
    assert power == pytest.approx(0.8, abs=0.02)  # the formula confirms the simulation
    fixed = planning.detectable("fixed-categories", components, 3, alpha, 0.8, rng)
    se = np.sqrt(0.004 ** 2 / 3 / categories)
    df = categories * 2
    q = stats.t.ppf(1 - alpha / 2, df)
    power = stats.nct.sf(q, df, fixed / se) + stats.nct.cdf(-q, df, fixed / se)
    assert 0.8 <= power <= 0.87  # Welch-Satterthwaite's estimated df are fewer than the pooled 18: a bit more needed
    assert np.isnan(planning.detectable("fixed-categories", components, 1, alpha, 0.8, rng))  # one seed: no answer
    assert planning.detectable("fixed-categories", components, 5, alpha, 0.8, rng) < fixed


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json")),
                         ids=lambda path: path.stem)
def test_every_preset_declares_a_valid_plan(path: Path) -> None:
    plan = decision.read_study_plan(path)
    questions = plan.primary if plan.primary is not None else decision.default_primary(plan.pairs or [])
    assert {pair for q in questions for pair in q.pairs} <= set(plan.pairs or [])  # without pairs: compare's default
    assert plan.claim_basis in decision.CLAIM_BASES
    if path.stem == "full_study":
        assert [q.key for q in questions] == [("resnet50 vs convnext_tiny", "overall", m)
                                              for m in ("image_auroc", "pixel_auroc", "aupro")]


def test_the_planning_table_says_why_a_design_has_no_answer(fair_report: report.Report) -> None:
    planning_frame = fair_report.decision.planning.set_index(["metric", "answer"])
    fixed = planning_frame.loc[("aupro", "on these categories")]
    assert np.isnan(fixed["detectable_1_seed"]) and fixed["detectable_3_seeds"] > fixed["detectable_5_seeds"] > 0
    assert fixed["note"] == "1 seed: cannot be computed (no seed-to-seed variance)"
    new = planning_frame.loc[("aupro", "to new categories")]
    values = new[["detectable_1_seed", "detectable_3_seeds", "detectable_5_seeds"]].astype(float).to_numpy()
    assert (values > 0).all() and values[0] >= values[1] >= values[2]  # the categories' spread stays with any seeds
    cells, _ = pair_cells(fair_report.runs, FAIR_PAIR, list(SIX), "aupro")
    assert fixed["seed_sd"] == pytest.approx(np.sqrt(cells.groupby("category")["difference"].var(ddof=1).mean()))
    assert fixed["n_categories"] == 6 and fixed["seeds"] == "3"


# ---------------------------------------------------------------------------------------------- seeds as they come


def test_an_extra_seed_in_one_category_keeps_every_category(tmp_path: Path) -> None:
    """issue 23: one category trained with an extra seed (both backbones) once emptied the primary table."""
    categories = SIX[:4]
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=categories, seeds=(0, 1, 2),
                                 extra=[(name, "cable", 3) for name in FAIR_PAIR])
    rep = report.build_report(results, [FAIR_PAIR], n_boot=20)
    primary = rep.decision.primary
    assert (primary["n_categories"] == 4).all() and (primary["n_cells"] == 13).all()
    assert set(primary["seeds"]) == {"3-4"} and set(primary["seed_counts"]) == {"cable 4; the others 3"}
    assert primary["p_fixed"].notna().all() and primary["p_new"].notna().all() and not primary["excluded"].any()
    text = report.render_report(rep, [])
    assert text.count("cable 4; the others 3") >= 3  # the report names the per-category seed counts
    groups = report.group_stats(rep.runs).query("group == 'overall'")
    assert (groups["n_categories"] == 4).all() and (groups["left_out"] == "").all()
    cable = rep.runs.query("category == 'cable' and backbone == 'resnet50'")["image_auroc"].mean()
    others = rep.runs.query("category != 'cable' and backbone == 'resnet50'").groupby("category")["image_auroc"].mean()
    mean = groups.set_index(["backbone", "metric"]).loc[("resnet50", "image_auroc"), "mean"]
    assert mean == pytest.approx((cable + others.sum()) / 4)  # every category weighs the same


def test_a_detectable_difference_beyond_the_metrics_range_is_named_out_of_reach() -> None:
    """With 2 categories the "to new categories" t has 1 degree of freedom: its detectable difference can exceed the
    100 points a metric in [0, 1] can differ by; the table says so instead of printing e.g. 793 points."""
    from report_tables import detectable_text

    assert detectable_text(7.9341) == "> 100: out of reach" and detectable_text(-1.5) == "> 100: out of reach"
    assert detectable_text(0.0535) == "5.35" and detectable_text(1.0) == "100.00"
    assert detectable_text(float("nan")) == "n/a"
