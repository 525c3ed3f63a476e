"""The inference API (inference.py): both answers by hand, intervals that agree with their p in every simulated study,
seeds as they come (extra, disjoint and single seeds), the direction of a verdict when the mean and the majority of
categories disagree (issue 23's 14-vs-1 example), and tidy tables with any arm and metric names."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calibration
import claims
import inference
from errors import RDError


def runs_table(values: dict[tuple[str, str, int], float], metric: str = "aupro") -> pd.DataFrame:
    """A tidy runs table from {(arm, category, seed): value}."""
    return pd.DataFrame([{"arm": arm, "category": category, "seed": seed, metric: value}
                         for (arm, category, seed), value in values.items()])


def study(differences: dict[str, list[float]], a: str = "A", b: str = "B", metric: str = "aupro") -> pd.DataFrame:
    """Runs of two arms whose per-seed differences a - b are ``differences`` (b at 0.5 everywhere)."""
    values = {}
    for category, cells in differences.items():
        for seed, difference in enumerate(cells):
            values[(a, category, seed)], values[(b, category, seed)] = 0.5 + difference, 0.5
    return runs_table(values, metric)


def test_the_fixed_answer_by_hand_and_against_scipy() -> None:
    cells = {"c1": [0.02, 0.03, 0.05], "c2": [0.01, -0.01], "c3": [0.04]}
    answers = inference.compare_arms(study(cells), "A", "B", "aupro")
    s1, s2 = np.var(cells["c1"], ddof=1), np.var(cells["c2"], ddof=1)
    pooled = (2 * s1 + s2) / 3  # the single-seed category's variance: pooled over the others
    variance = s1 / 3 + s2 / 2 + pooled
    df = variance ** 2 / ((s1 * (1 / 3 + 2 / 3)) ** 2 / 2 + (s2 * (1 / 2 + 1 / 3)) ** 2 / 1)
    estimate = np.mean([np.mean(v) for v in cells.values()])
    se = np.sqrt(variance) / 3
    fixed = answers.fixed
    assert (fixed.estimate, fixed.se, fixed.df) == pytest.approx((estimate, se, df))
    assert fixed.p_value == pytest.approx(2 * stats.t.sf(abs(estimate / se), df))
    assert fixed.ci_high - fixed.estimate == pytest.approx(stats.t.ppf(0.975, df) * se)
    one = inference.compare_arms(study({"c1": cells["c1"]}), "A", "B", "aupro").fixed  # one category: a t over seeds
    expected = stats.ttest_1samp(cells["c1"], 0.0)
    assert one.p_value == pytest.approx(expected.pvalue) and one.ci_low == pytest.approx(
        expected.confidence_interval(0.95).low)
    means = [np.mean(v) for v in cells.values()]
    assert answers.new.p_value == pytest.approx(stats.ttest_1samp(means, 0.0).pvalue) and answers.new.df == 2


def test_every_interval_agrees_with_its_p_over_many_simulated_studies() -> None:
    scenario = calibration.Scenario("check", 7, 3, ceiling=0.3, ragged=True)
    rng = np.random.default_rng(5)
    rejected = []
    for truth in (0.0, 0.004):
        cells, _, _ = calibration.simulate_cells(scenario, 3000, rng, new_truth=truth)
        for arrays in (inference.fixed_arrays(cells), inference.new_arrays(np.nanmean(cells, axis=-1))):
            computed = ~np.isnan(arrays.p_value)
            assert computed.mean() > 0.99
            excludes = (arrays.low > 0) | (arrays.high < 0)
            assert np.array_equal(arrays.p_value[computed] < 0.05, excludes[computed])
            rejected.append(np.mean(arrays.p_value[computed] < 0.05))
    assert min(rejected) > 0.02 and max(rejected) < 0.98  # both outcomes occur: the agreement is not trivial
    for study_cells in cells[:25]:  # the tidy path of the report gives the same pair of numbers
        rows = [(f"c{c}", s, v) for c, row in enumerate(study_cells) for s, v in enumerate(row) if not np.isnan(v)]
        answers = inference.answer_cells(pd.DataFrame(rows, columns=inference.CELL_COLUMNS))
        for answer in (answers.fixed, answers.new):
            if answer.computed:
                assert (answer.p_value < 0.05) == (answer.ci_low > 0 or answer.ci_high < 0)


def test_seeds_as_they_come() -> None:
    base = {(arm, f"c{c}", s): 0.5 + (arm == "A") * (0.01 + 0.003 * ((c * 7 + s * 3) % 5 - 2))
            for arm in ("A", "B") for c in range(4) for s in range(3)}
    extra = {**base, ("A", "c0", 3): 0.52, ("B", "c0", 3): 0.5}  # one category with a fourth seed (both arms)
    answers = inference.compare_arms(runs_table(extra), "A", "B", "aupro")
    assert answers.n_categories == 4 and not answers.excluded and answers.seeds.to_dict() == {
        "c0": 4, "c1": 3, "c2": 3, "c3": 3}
    assert answers.seeds_text() == "3-4" and answers.seed_counts_text() == "c0 4; the others 3"
    shifted = {(arm, "c1", s + (arm == "A")): v for (arm, c, s), v in base.items() if c == "c1"}  # {1,2,3} vs {0,1,2}
    overlap = {**{k: v for k, v in base.items() if k[1] != "c1"}, **shifted}
    answers = inference.compare_arms(runs_table(overlap), "A", "B", "aupro")
    assert answers.seeds["c1"] == 2 and answers.n_categories == 4  # the seeds both arms ran: 1 and 2
    assert answers.unpaired == {"c1": "A seed 3; B seed 0"}  # named, never dropped silently
    assert "runs without the other arm's seed left out: c1 (A seed 3; B seed 0)" in inference.answer_columns(
        answers)["note"]
    disjoint = {**{k: v for k, v in base.items() if k[1] != "c2"}, ("A", "c2", 0): 0.5, ("A", "c2", 1): 0.5,
                ("B", "c2", 5): 0.5}
    answers = inference.compare_arms(runs_table(disjoint), "A", "B", "aupro")
    assert list(answers.differences.index) == ["c0", "c1", "c3"]
    assert answers.excluded == {"c2": "no seed both arms ran (A: seeds 0, 1; B: seeds 5)"}
    assert "left out: c2 (no seed both arms ran" in inference.answer_columns(answers)["note"]
    single = {k: v for k, v in base.items() if not (k[1] == "c3" and k[2] > 0)}  # c3 ran one seed
    answers = inference.compare_arms(runs_table(single), "A", "B", "aupro")
    assert answers.seeds["c3"] == 1 and answers.fixed.computed and answers.new.computed
    only_one = inference.compare_arms(runs_table({k: v for k, v in base.items() if k[2] == 0}), "A", "B", "aupro")
    assert not only_one.fixed.computed and only_one.new.computed
    assert only_one.fixed.note.startswith("cannot be computed for this design: one seed per category")
    unmeasured = {**base, ("B", "c3", 0): np.nan, ("B", "c3", 1): np.nan, ("B", "c3", 2): np.nan}
    assert inference.compare_arms(runs_table(unmeasured), "A", "B", "aupro").excluded == {
        "c3": "aupro not measured for B"}


def _row(answers: inference.Answers, basis: str) -> object:
    frame = inference.family_table([{"pair": "A vs B", "metric": "image_auroc", "group": "overall", "dataset": "d",
                                     **inference.answer_columns(answers)}], basis)
    return next(frame.itertuples())


def test_a_verdict_says_when_the_mean_and_most_categories_disagree() -> None:
    """issue 23: 14 categories at +0.1 to +1.4 points and one at -20 once printed "significant (B higher)" on the
    new-categories basis beside "A higher in 14"."""
    rng = np.random.default_rng(2)
    effects = [0.001 * (i + 1) for i in range(14)] + [-0.2]
    cells = {f"c{c:02d}": list(effect + rng.normal(0, 0.0005, 3)) for c, effect in enumerate(effects)}
    answers = inference.compare_arms(study(cells), "A", "B", "aupro")
    assert answers.wins == (14, 1) and answers.fixed.estimate < 0
    assert answers.signed_rank.p_value < 0.01  # the majority's direction is clear ...
    new = claims.primary_sentence(_row(answers, "new-categories"))
    assert "On the claim basis (to new categories): not significant" in new  # ... the mean over categories is not
    assert ("A higher in 14, B higher in 1 of 15 categories; the mean says B higher, most categories say A higher."
            in new)
    fixed = claims.primary_sentence(_row(answers, "fixed-categories"))
    assert "On the claim basis (on these categories): significant (B higher on average); A higher in 14" in fixed
    assert fixed.endswith("the mean says B higher, most categories say A higher.")


def test_the_tidy_api_takes_any_arm_and_metric_names() -> None:
    values = {(arm, f"cat{c}", s): 0.6 + 0.02 * (arm == "RD++ (wrn50)") + 0.01 * np.sin(3 * c + s + (arm == "RD4AD"))
              for arm in ("RD++ (wrn50)", "RD4AD") for c in range(5) for s in range(2)}
    runs = runs_table(values, "aupimo").rename(columns={"arm": "method"})
    table = inference.question_table(runs, [("RD++ (wrn50)", "RD4AD", "aupimo"), ("RD4AD", "RD++ (wrn50)", "aupimo")],
                                     arm="method")
    assert table["mean_diff"].tolist() == pytest.approx([0.02, -0.02], abs=0.01)
    assert table["p_fixed"].iloc[0] == pytest.approx(table["p_fixed"].iloc[1])  # a − b and b − a: one test
    assert table["p_fixed_holm"].tolist() == pytest.approx([min(1, 2 * table["p_fixed"].iloc[0])] * 2)
    units = pd.DataFrame([{"arm": arm, "category": "c", "seed": s, "unit": f"img{i}", "value": 0.1 * i + (arm == "a")
                           + 0.01 * s} for arm in ("a", "b") for s in (0, 1) for i in range(3 + (arm == "a"))])
    paired = inference.paired_units(units, "a", "b")
    assert len(paired) == 6 and paired["difference"].to_numpy() == pytest.approx(np.ones(6))  # img3: no partner
    cells = inference.unit_cells(paired)
    assert cells[["seed", "n_units"]].values.tolist() == [[0, 3], [1, 3]]
    first = pd.DataFrame({"category": ["x", "x", "y"], "seed": [0, 1, 0], "difference": [0.3, 0.2, 0.1]})
    second = pd.DataFrame({"category": ["x", "y", "y"], "seed": [0, 0, 1], "difference": [0.1, 0.4, 0.0]})
    contrast = inference.contrast_cells(first, second)
    assert contrast.values.tolist() == [["x", 0, pytest.approx(0.2)], ["y", 0, pytest.approx(-0.3)]]


@pytest.mark.parametrize("frame, message", [
    (runs_table({("A", "c", 0): 0.5, ("B", "c", 0): 0.4}).pipe(lambda f: pd.concat([f, f.iloc[:1]])),
     r"arm A, category c, seed 0 appears more than once"),
    (pd.DataFrame({"arm": ["A"], "category": ["c"], "seed": [0]}), r"expected the columns arm, category, seed, aupro"),
])
def test_a_bad_runs_table_is_one_clear_error(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(RDError, match=message):
        inference.compare_arms(frame, "A", "B", "aupro")
    with pytest.raises(RDError, match="expected a finite difference"):
        inference.answer_cells(pd.DataFrame({"category": ["c"], "seed": [0], "difference": [np.inf]}))
