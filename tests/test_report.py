"""The fair-comparison report (`main.py compare`), its portfolio block and the tester notebook, on fake runs."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

import claims
import comparison
import image_inference
import report
import runs
from backbones import FAIR_PAIR
from errors import RDError
from fake_results import THREE_FAMILIES, write_fake_results
import report_tables
from significance import benjamini_hochberg, holm
from scipy import stats

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"
PORTFOLIO = CODE_DIR / "RD_Model_Comparison_Portfolio.md"
RANDOM_BACKBONE = "wide_resnet50_2"
NO_MASKS = "synth_texture"
PAIRS = ("--pair", "resnet50,convnext_tiny", "--pair", f"resnet50,{RANDOM_BACKBONE}")
N_BOOT = ("--n-boot", "200")
SECTIONS = (
    "## Primary questions",
    "### Conclusions",
    "## Headline: paired differences over categories (exploratory)",
    "## How many seeds?",
    "## Metrics per category and backbone",
    "## Group and overall means",
    "## Overall means beside published references",
    "## Per-category paired tests of every paired metric (exploratory)",
    "## AUPIMO per image (exploratory)",
    "## Per defect type",
    "## Efficiency",
    "## Figures",
)
TABLES = ("primary_tests", "primary_tests_table", "aggregate_tests", "aggregate_tests_table", "seed_power_numeric",
          "category_metrics", "group_means", "reference", "pairwise_tests", "pairwise_tests_numeric", "per_defect",
          "seed_power", "efficiency", "runs", "category_intervals", "aupimo_images", "aupimo_images_numeric")
MEASURED = [metric for metric in comparison.PAIRED_METRICS if metric != "spro"]  # the fake runs are not MVTec LOCO


def copy_project(results: Path, destination: Path, *skip: str) -> Path:
    """Copy the fake project (data/ and results/, minus ``skip`` names) so it can be changed; its results."""
    shutil.copytree(results.parent, destination, ignore=shutil.ignore_patterns(*skip))
    return destination / results.name


def compare(*args: str) -> int:
    """Run `main.py compare` in this process (sys.argv restored afterwards)."""
    import main

    saved = sys.argv[:]
    try:
        return main.main(["compare", *args])
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake runs: 3 backbones, 2 categories (one without masks), 2 seeds, one backbone with random teachers."""
    root = tmp_path_factory.mktemp("fake")
    return write_fake_results(root, random_teachers=(RANDOM_BACKBONE,), without_masks=(NO_MASKS,))


@pytest.fixture(scope="module")
def pair_results(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake runs of the fair pair only: fewer figures for the slower tests."""
    return copy_project(results, tmp_path_factory.mktemp("pair") / "project", RANDOM_BACKBONE)


@pytest.fixture(scope="module")
def reports(results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same results compared twice, into two report folders."""
    outs = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for out in outs:
        assert compare("--results", str(results), "--out", str(out), *PAIRS, *N_BOOT) == 0
    return outs


def outside_block(text: str) -> tuple[str, str]:
    return text.split(report.BEGIN_MARKER)[0], text.split(report.END_MARKER)[1]


def table(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def test_report_has_every_section_table_and_figure(reports: tuple[Path, Path]) -> None:
    out = reports[0]
    text = (out / "report.md").read_text(encoding="utf-8")
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert text.count("_Provenance: data ") >= 8  # one per table
    assert "image size 32 px; epochs 3 requested; model: the last epoch's weights" in text and "SYNTHETIC" in text
    for name in TABLES:
        assert (out / "tables" / f"{name}.csv").is_file(), name
    aggregate = table(out, "aggregate_tests")
    assert list(aggregate.columns[:15]) == ["pair", "group", "metric", "n_categories", "n_cells", "seeds",
                                            "mean_diff", "ci_low_fixed", "ci_high_fixed", "p_fixed", "p_fixed_bh",
                                            "ci_low_new", "ci_high_new", "p_new", "p_new_bh"]
    for pair in ("resnet50 vs convnext_tiny", f"resnet50 vs {RANDOM_BACKBONE}"):
        rows = aggregate[aggregate["pair"] == pair]
        assert set(zip(rows["group"], rows["metric"])) == {(g, m) for g in ("texture", "object", "overall")
                                                           for m in MEASURED}
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    kinds = {Path(link).stem.split("_")[0] for link in links}
    assert kinds == {"forest", "bars", "roc", "pro", "hist", "gallery", "extremes", "why"}  # why: the histories
    assert sum(Path(link).stem.startswith("forest_") for link in links) == 2 * 3  # per pair and metric
    assert all((out / link).is_file() for link in links)
    assert text.index("figures/forest_") < text.index("| pair (a − b) | group |")  # forest plots before any table
    per_defect = table(out, "per_defect")
    assert set(per_defect["defect type"]) == {"scratch", "stain"} and "AUPRO (%)" in per_defect.columns
    reference = table(out, "reference").set_index("method")
    assert str(reference.filter(like="RD++", axis=0)["AUPRO (%)"].iloc[0]) == "95.0"
    assert "best test epoch" in reference.filter(like="RD++", axis=0)["protocol"].iloc[0]
    assert str(reference.filter(like="RD4AD", axis=0)["image AUROC (%)"].iloc[0]) == "98.5"


def test_compare_twice_gives_identical_report_and_tables(reports: tuple[Path, Path]) -> None:
    first, second = reports
    assert (first / "report.md").read_bytes() == (second / "report.md").read_bytes()
    csvs = sorted(path.name for path in (first / "tables").glob("*.csv"))
    assert csvs == sorted(path.name for path in (second / "tables").glob("*.csv"))
    for name in csvs:
        assert (first / "tables" / name).read_bytes() == (second / "tables" / name).read_bytes(), name


def test_random_teacher_warning_is_loud_and_first(reports: tuple[Path, Path], results: Path) -> None:
    text = (reports[0] / "report.md").read_text(encoding="utf-8")
    first_paragraph = text.split("\n\n")[1]
    assert first_paragraph.startswith("**WARNING: RANDOM TEACHERS.**") and RANDOM_BACKBONE in first_paragraph
    pretrained = runs.load_runs(results).query("backbone != @RANDOM_BACKBONE")
    assert report.teacher_warning(pretrained) is None


def test_pixel_metrics_without_masks_are_na(reports: tuple[Path, Path], results: Path) -> None:
    frame = report.category_table(runs.load_runs(results)).set_index(["category", "backbone"])
    assert set(frame.loc[NO_MASKS, "pixel AUROC (%)"]) == {"n/a"}
    assert set(frame.loc[NO_MASKS, "AUPRO (%)"]) == {"n/a"}
    assert "n/a" not in set(frame.loc["synth_object", "pixel AUROC (%)"])
    text = (reports[0] / "report.md").read_text(encoding="utf-8")
    assert f"PRO curves for {NO_MASKS} skipped: the data has no ground-truth masks" in text
    assert not (reports[0] / "figures" / f"pro_{NO_MASKS}.png").exists()


# ---------------------------------------------------------------------------------------------- claims

CLAIM_WORDS = re.compile(r"\b(higher|lower|better|worse|significant(ly)?|outperforms?|superior|inferior|beats?)\b",
                         re.IGNORECASE)
NAME = r"[\w.+-]+"  # a backbone or an arm label (resnet50+rdpp)
METHOD = r"RD4AD|RD\+\+"
P = r"[=<] [0-9.e+-]+"  # claims.p_is: "= 0.0312" or "< 1e-10"
METRIC = "|".join(map(re.escape, comparison.PAIRED_METRICS.values()))
HEAD = rf"\*\*(?P<group>[^*]+)\*\*, (?P<metric>{METRIC}), (?P<a>{NAME}) − (?P<b>{NAME})"
DIFFERENCE = (r"mean difference (?P<diff>[+-]\d+\.\d\d) points over (?P<n>\d+) categor(?:y|ies) × (?P<seeds>[\d-]+) "
              r"seeds?")
INTERVAL = r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]"
REASON = r"(?:cannot be computed|not tested|not averaged)[^;]*"


def _answer_pattern(name: str, adjusted: str) -> str:
    """One answer: its interval beside its raw p, then the adjusted p; or why it was not computed."""
    return (rf"(?:95% CI (?P<ci_{name}>{INTERVAL}), t-test p (?P<p_{name}>{P}), {adjusted}-adjusted p "
            rf"(?P<adj_{name}>{P})|(?P<reason_{name}>{REASON}))")


CHECK = (rf"signed-rank check (?:p (?P<p_check>{P}) \((?:exact|Monte Carlo); smallest reachable [^)]+\)|"
         r"not tested \(every category tied\))")
WINS = (rf"(?P<a2>{NAME}) higher in (?P<wins_a>\d+), (?P<b2>{NAME}) higher in (?P<wins_b>\d+)"
        r"(?:, tied in (?P<tied>\d+))? of (?P=n) categor(?:y|ies)"
        rf"(?:; the mean says (?P<mean_side>{NAME}) higher, most categories say (?P<most_side>{NAME}) higher)?\.")
PRIMARY_CLAIM = re.compile(
    rf"{HEAD} \(primary\): {DIFFERENCE}; on these categories: {_answer_pattern('fixed', 'Holm')}; to new "
    rf"categories: {_answer_pattern('new', 'Holm')}; {CHECK}\. On the claim basis \((?P<basis>on these categories|"
    rf"to new categories)\): (?P<verdict>significant \((?P<winner>{NAME}) higher on average\)|not significant|"
    rf"not tested); {WINS}")
AGGREGATE_CLAIM = re.compile(
    rf"{HEAD} \(exploratory\): {DIFFERENCE}; on these categories: {_answer_pattern('fixed', 'BH')}; to new "
    rf"categories: {_answer_pattern('new', 'BH')}; {CHECK}; {WINS}")
CATEGORY_CLAIM = re.compile(
    rf"\*\*(?P<category>[^*]+)\*\*, seed (?P<seed>\d+), (?P<metric>{METRIC}), (?P<a>{NAME}) − (?P<b>{NAME}): "
    rf"(?P<diff>[+-]\d+\.\d\d) points \((?P<test>DeLong|bootstrap), BH-adjusted p (?P<p_bh>{P}); exploratory lead: "
    rf"(?P<winner>{NAME}) higher\)\.")
INTERACTION_CLAIM = re.compile(  # claims.interaction_sentence
    rf"\*\*(?P<group>[^*]+)\*\*, (?P<metric>{METRIC}), \((?P<a1>{NAME}) − (?P<b1>{NAME})\) − \((?P<a2>{NAME}) − "
    rf"(?P<b2>{NAME})\) \(primary, interaction: does (?P<a>{NAME}) − (?P<b>{NAME}) differ between (?P<m1>{METHOD}) and "
    rf"(?P<m2>{METHOD})\?\): mean difference of differences (?P<diff>[+-]\d+\.\d\d) points over (?P<n>\d+) "
    rf"categor(?:y|ies) × (?P<seeds>[\d-]+) seeds?; on these categories: {_answer_pattern('fixed', 'Holm')}; to new "
    rf"categories: {_answer_pattern('new', 'Holm')}; {CHECK}\. On the claim basis \((?P<basis>on these categories|"
    rf"to new categories)\): (?P<verdict>significant \((?P=a) − (?P=b) larger under (?P<winner>{METHOD}) than under "
    rf"(?P<loser>{METHOD}) on average\)|not significant|not tested); (?P=a) − (?P=b) larger under (?P=m1) in "
    rf"(?P<wins_a>\d+), under (?P=m2) in (?P<wins_b>\d+)(?:, tied in (?P<tied>\d+))? of (?P=n) categor(?:y|ies)"
    rf"(?:; the mean says larger under (?P<mean_side>{METHOD}), most categories say under (?P<most_side>{METHOD}))?\.")
COUNT_CLAIM = re.compile(r"Per category and seed \(exploratory\): (?P<k>\d+) of (?P<n>\d+) tests have a "
                         r"Benjamini-Hochberg-adjusted p below 0\.05 \(false-discovery rate within this table\)\.")
LABEL_TO_METRIC = {label: key for key, label in comparison.PAIRED_METRICS.items()}


def _table_row(match: re.Match, frame: pd.DataFrame, label: str) -> pd.Series:
    """The one row of ``frame`` a sentence names (its pair label, group and metric), with the sentence's mean
    difference, seeds, category count and wins checked against it."""
    rows = frame[(frame["pair"] == label) & (frame["group"] == match["group"])
                 & (frame["metric"] == LABEL_TO_METRIC[match["metric"]])]
    assert len(rows) == 1, match.group(0)
    row = rows.iloc[0]
    assert f"{row['mean_diff'] * 100:+.2f}" == match["diff"] and str(row["seeds"]) == match["seeds"]
    assert (int(match["n"]), int(match["wins_a"]), int(match["wins_b"])) == (row["n_categories"], row["wins_a"],
                                                                              row["wins_b"])
    return row


def _row_of(match: re.Match, frame: pd.DataFrame) -> pd.Series:
    row = _table_row(match, frame, f"{match['a']} vs {match['b']}")
    assert (match["a2"], match["b2"]) == (match["a"], match["b"])
    _check_sides(match, row, match["a"], match["b"])
    _check_answers(match, row)
    return row


def _check_sides(match: re.Match, row: pd.Series, a: str, b: str) -> None:
    """The "the mean says ..., most categories say ..." clause: there exactly when the two disagree."""
    mean_side = a if row["mean_diff"] > 0 else b if row["mean_diff"] < 0 else None
    most_side = a if row["wins_a"] > row["wins_b"] else b if row["wins_b"] > row["wins_a"] else None
    disagree = mean_side is not None and most_side is not None and mean_side != most_side
    assert (match["mean_side"], match["most_side"]) == ((mean_side, most_side) if disagree else (None, None))


def _check_answers(match: re.Match, row: pd.Series) -> None:
    """Each answer's interval beside its own raw p, and the signed-rank check: the numbers of the table."""
    for answer in ("fixed", "new"):  # each interval beside its own raw p: the numbers of the table
        if pd.isna(row[f"p_{answer}"]):
            assert match[f"reason_{answer}"] is not None and match[f"p_{answer}"] is None
            continue
        assert match[f"p_{answer}"] == _p_text(row[f"p_{answer}"])
        assert match[f"ci_{answer}"] == report_tables.interval_text(row[f"ci_low_{answer}"], row[f"ci_high_{answer}"])
        excludes_zero = row[f"ci_low_{answer}"] > 0 or row[f"ci_high_{answer}"] < 0
        assert excludes_zero == (row[f"p_{answer}"] < comparison.ALPHA)  # the pair printed side by side agrees
    assert match["p_check"] == _p_text(row["p_signed_rank"])


def _p_text(value: float) -> str | None:
    return None if pd.isna(value) else report_tables.p_is(value)


def _check_primary(match: re.Match, primary: pd.DataFrame) -> None:
    row = _row_of(match, primary)
    assert match["adj_fixed"] == _p_text(row["p_fixed_holm"])
    assert match["adj_new"] == _p_text(row["p_new_holm"])
    assert match["basis"] == claims.CLAIM_BASES[row["claim_basis"]]
    basis = row["p_fixed_holm"] if row["claim_basis"] == "fixed-categories" else row["p_new_holm"]
    if match["verdict"] == "not tested":
        assert pd.isna(basis)
    elif match["verdict"].startswith("significant"):
        assert bool(row["significant"]) and basis < comparison.ALPHA
        assert match["winner"] == (match["a"] if row["mean_diff"] > 0 else match["b"])
    else:
        assert not bool(row["significant"]) and basis >= comparison.ALPHA


def _check_interaction(match: re.Match, primary: pd.DataFrame) -> None:
    """An interaction sentence against its primary_tests.csv row: numbers, answers, verdict and its direction."""
    row = _table_row(match, primary, f"({match['a1']} vs {match['b1']}) vs ({match['a2']} vs {match['b2']})")
    assert match["a1"].startswith(match["a"]) and match["b2"].startswith(match["b"])
    _check_sides(match, row, match["m1"], match["m2"])
    _check_answers(match, row)
    assert match["adj_fixed"] == _p_text(row["p_fixed_holm"]) and match["adj_new"] == _p_text(row["p_new_holm"])
    basis = row["p_fixed_holm"] if row["claim_basis"] == "fixed-categories" else row["p_new_holm"]
    if match["verdict"].startswith("significant"):
        assert bool(row["significant"]) and basis < comparison.ALPHA
        assert (match["winner"], match["loser"]) == ((match["m1"], match["m2"]) if row["mean_diff"] > 0 else
                                                     (match["m2"], match["m1"]))
    else:
        assert not bool(row["significant"]) and (pd.isna(basis) == (match["verdict"] == "not tested"))


def _check_aggregate(match: re.Match, aggregate: pd.DataFrame) -> None:
    row = _row_of(match, aggregate)
    assert row["family"] == "exploratory"
    assert match["adj_fixed"] == _p_text(row["p_fixed_bh"]) and match["adj_new"] == _p_text(row["p_new_bh"])


def _check_category(match: re.Match, tests: pd.DataFrame) -> None:
    rows = tests[(tests["category"] == match["category"]) & (tests["seed"] == int(match["seed"]))
                 & (tests["metric"] == LABEL_TO_METRIC[match["metric"]]) & (tests["backbone_a"] == match["a"])
                 & (tests["backbone_b"] == match["b"])]
    assert len(rows) == 1, match.group(0)
    row = rows.iloc[0]
    assert row["p_bh"] < comparison.ALPHA and f"{row['difference'] * 100:+.2f}" == match["diff"]
    assert match["p_bh"] == _p_text(row["p_bh"])
    assert match["winner"] == (match["a"] if row["difference"] > 0 else match["b"])


def assert_claims_backed(text: str, tables: Path) -> int:
    """Every claim in the generated ``text`` matches a template and its numbers; no other claim word is left."""
    aggregate, tests = pd.read_csv(tables / "aggregate_tests.csv"), pd.read_csv(tables / "pairwise_tests_numeric.csv")
    primary = pd.read_csv(tables / "primary_tests.csv")
    for sentence in report.DEFINITIONS:
        text = text.replace(sentence, "")
    checked = 0
    for pattern, check in ((INTERACTION_CLAIM, lambda m: _check_interaction(m, primary)),
                           (PRIMARY_CLAIM, lambda m: _check_primary(m, primary)),
                           (AGGREGATE_CLAIM, lambda m: _check_aggregate(m, aggregate)),
                           (CATEGORY_CLAIM, lambda m: _check_category(m, tests))):
        for match in pattern.finditer(text):
            check(match)
            checked += 1
        text = pattern.sub("", text)
    for match in COUNT_CLAIM.finditer(text):
        tested = tests.dropna(subset=["p_bh"])
        assert int(match["k"]) == (tested["p_bh"] < comparison.ALPHA).sum() and int(match["n"]) == len(tested)
        checked += 1
    text = COUNT_CLAIM.sub("", text)
    leftover = [line for line in text.splitlines() if CLAIM_WORDS.search(line)]
    assert not leftover, f"unchecked claims: {leftover[:3]}"
    return checked


def test_every_claim_in_the_report_is_backed_by_its_tables(reports: tuple[Path, Path]) -> None:
    out = reports[0]
    text = (out / "report.md").read_text(encoding="utf-8")
    # 2 pairs: 3 primary and 6 exploratory sentences each, and the count
    assert assert_claims_backed(text, out / "tables") >= 2 * 3 * 3 + 1
    assert len(PRIMARY_CLAIM.findall(text)) == 2 * 3
    aggregate = table(out, "aggregate_tests")
    for answer in ("fixed", "new"):
        adjusted = aggregate[f"p_{answer}_bh"].dropna()
        assert adjusted.ge(aggregate.loc[adjusted.index, f"p_{answer}"]).all()
        assert aggregate.loc[aggregate["family"] == "primary", f"p_{answer}_bh"].isna().all()
    overall = aggregate[aggregate["group"] == "overall"]
    primary = overall["metric"].isin(comparison.DEFAULT_PRIMARY_METRICS)
    assert set(overall.loc[primary, "family"]) == {"primary"} and set(overall.loc[~primary, "family"]) == {
        "exploratory"}  # the new metrics are exploratory unless a config declares them


def test_a_claim_that_the_tables_do_not_back_is_caught(reports: tuple[Path, Path]) -> None:
    out = reports[0]
    text = (out / "report.md").read_text(encoding="utf-8")
    with pytest.raises(AssertionError):
        assert_claims_backed(text.replace("): not significant;", "): significant (resnet50 higher);", 1),
                             out / "tables")
    with pytest.raises(AssertionError, match="unchecked claims"):
        assert_claims_backed(text + "\nConvNeXt is clearly better.\n", out / "tables")
    with pytest.raises(AssertionError, match="unchecked claims"):  # "significant" said of an exploratory test
        assert_claims_backed(re.sub(r"(BH-adjusted p [=<] [0-9.e+-]+);", r"\1: significant;", text, count=1),
                             out / "tables")
    with pytest.raises(AssertionError):  # an interval that is not the table's
        assert_claims_backed(re.sub(r"95% CI \[[+-]\d", "95% CI [+9", text, count=1), out / "tables")


# ---------------------------------------------------------------------------------------------- tests and means


def test_paired_tests_join_the_same_images(results: Path, tmp_path: Path) -> None:
    copy = copy_project(results, tmp_path / "project", RANDOM_BACKBONE)
    scores = copy / "resnet50" / "synth_object" / "seed0" / runs.SCORES_FILE
    lines = scores.read_text(encoding="utf-8").splitlines()
    scores.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one test image fewer
    (copy / "resnet50" / "synth_texture" / "seed1" / runs.METRICS_FILE).unlink()  # trained, not tested
    rep = report.build_report(copy, "resnet50,convnext_tiny", n_boot=50)
    tests = rep.tests.query("metric == 'image_auroc'").set_index(["category", "seed"])
    assert tests.at[("synth_object", 0), "n_images"] == len(lines) - 2
    assert tests.at[("synth_object", 0), "n_unmatched"] == 1  # convnext_tiny seed 0 scored the dropped image
    assert tests.at[("synth_object", 1), "n_unmatched"] == 2  # both seed-1 runs did: every run uses the common images
    assert len(rep.runs) == 7 and "resnet50/synth_texture/seed1" in report.untested_note(rep)
    assert set(tests.loc["synth_texture"].index) == {0}
    aggregate = rep.comparison.aggregate.set_index(["group", "metric"])
    texture = aggregate.loc[("texture", "image_auroc")]  # a missing seed never removes its category (issue 23)
    assert (texture["n_categories"], texture["n_cells"], texture["seeds"], texture["excluded"]) == (1, 1, "1", "")
    original = report.build_report(results.parent / "results", "resnet50,convnext_tiny", n_boot=50)
    delong = original.tests.query("metric == 'image_auroc'")
    assert (delong["n_unmatched"] == 0).all()
    expected = runs.load_runs(results).query("backbone == 'resnet50'")["image_auroc"]
    assert sorted(delong["value_a"]) == pytest.approx(sorted(expected))


def test_images_resolve_from_the_project_root(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plots

    monkeypatch.chdir(tmp_path)  # not the project root: paths like data/synth_object/... resolve via the run dir
    row = runs.load_runs(results).iloc[0]
    path = runs.load_scores(row["run_dir"])["path"].iloc[0]
    assert plots.load_rgb(path, row, (16, 16)).shape == (16, 16, 3)
    assert plots.load_rgb("data/missing.png", row, (16, 16)) is None


def test_group_means_average_categories_per_seed_then_seeds(results: Path) -> None:
    frame = runs.load_runs(results)
    stats = report.group_stats(frame).set_index(["group", "backbone", "metric"])
    per_seed = frame[frame["backbone"] == "resnet50"].groupby("seed")["image_auroc"].mean()
    assert stats.at[("overall", "resnet50", "image_auroc"), "mean"] == pytest.approx(per_seed.mean())
    assert stats.at[("overall", "resnet50", "image_auroc"), "std"] == pytest.approx(per_seed.std(ddof=1))
    texture = frame.query("backbone == 'resnet50' and kind == 'texture'")["image_auroc"]
    assert stats.at[("texture", "resnet50", "image_auroc"), "mean"] == pytest.approx(texture.mean())
    # no masks in synth_texture: the overall pixel mean is over synth_object alone, and says so
    assert stats.at[("overall", "resnet50", "aupro"), "n_categories"] == 1
    assert f"{NO_MASKS}: AUPRO not measured" in stats.at[("overall", "resnet50", "aupro"), "left_out"]


def test_different_category_sets_are_not_silently_averaged(results: Path, tmp_path: Path) -> None:
    copy = copy_project(results, tmp_path / "project", RANDOM_BACKBONE)
    shutil.rmtree(copy / "convnext_tiny" / "synth_texture")  # convnext_tiny never ran synth_texture
    frame = runs.load_runs(copy)
    stats = report.group_stats(frame).set_index(["group", "backbone", "metric"])
    only_object = frame.query("backbone == 'resnet50' and category == 'synth_object'")["image_auroc"].mean()
    assert stats.at[("overall", "resnet50", "image_auroc"), "mean"] == pytest.approx(only_object)
    assert stats.at[("overall", "resnet50", "image_auroc"), "n_categories"] == 1
    assert "synth_texture: convnext_tiny has no run" in stats.at[("overall", "resnet50", "image_auroc"), "left_out"]
    assert np.isnan(stats.at[("texture", "resnet50", "image_auroc"), "mean"])  # nothing shared: not averaged
    groups = report.group_table(frame).set_index(["group", "backbone"])
    assert groups.at[("texture mean", "resnet50"), "image AUROC (%)"] == "n/a"
    assert "convnext_tiny has no run" in groups.at[("overall mean", "resnet50"), "left out (not averaged)"]
    rep = report.build_report(copy, "resnet50,convnext_tiny", n_boot=20)
    overall = rep.comparison.aggregate.query("group == 'overall' and metric == 'image_auroc'").iloc[0]
    assert overall["n_categories"] == 1 and "synth_texture (convnext_tiny has no run)" in overall["note"]


def test_the_new_metrics_and_the_per_image_table_reach_the_report(reports: tuple[Path, Path], results: Path) -> None:
    out = reports[0]
    tests, runs_frame = table(out, "pairwise_tests_numeric"), runs.load_runs(results)
    assert set(tests["metric"]) == set(MEASURED)  # sPRO (MVTec LOCO only) has no per-category test
    for metric in ("aupro_5pct", "aupimo", "seg_f1"):  # each value is its run's metrics.json value
        row = tests.query("metric == @metric and category == 'synth_object' and seed == 1").iloc[0]
        run = runs_frame.query("backbone == @row.backbone_a and category == 'synth_object' and seed == 1").iloc[0]
        assert row["value_a"] == pytest.approx(run[metric], abs=1e-9) and row["test"] == "bootstrap"
        assert row["ci_low"] <= row["difference"] <= row["ci_high"] and 0 <= row["p_value"] <= 1
    assert "AUPRO to FPR 0.05" in set(table(out, "aggregate_tests_table")["metric"])
    images = table(out, "aupimo_images_numeric")
    assert images["p_bh"].tolist() == pytest.approx(benjamini_hochberg(images["p_value"]).tolist())
    pair = images[images["pair"] == "resnet50 vs convnext_tiny"].set_index("category")
    assert list(pair.index) == ["synth_object", "overall"]  # synth_texture has no masks, so no AUPIMO
    # brute force from the aupimo.csv files: a − b per image path, averaged over the seeds, t over the images
    side = {backbone: pd.concat({seed: runs.load_aupimo(results / backbone / "synth_object" / f"seed{seed}")
                                 .set_index("path")["aupimo"] for seed in (0, 1)}, axis=1)
            for backbone in ("resnet50", "convnext_tiny")}
    differences = (side["resnet50"] - side["convnext_tiny"]).dropna()
    expected = stats.ttest_1samp(differences.mean(axis=1), 0.0)
    row = pair.loc["synth_object"]
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9) and row["n_images"] == len(differences)
    assert row["ci_low"] == pytest.approx(expected.confidence_interval(0.95).low, rel=1e-9)
    overall = image_inference.over_categories_arrays([differences.to_numpy()[None]])
    assert pair.at["overall", "p_value"] == pytest.approx(overall.p_value[0], rel=1e-9)
    text = (out / "report.md").read_text(encoding="utf-8")
    section = text.split("## AUPIMO per image (exploratory)")[1].split("\n## ")[0]
    assert "**Per category** (these trainings, new images)" in section and "**Overall** (on these" in section
    assert "| synth_object | images | 2 |" in section and "overall (mean of 1 category) | images and seeds |" in section


def test_a_metric_no_run_measured_is_named_once(tmp_path: Path) -> None:
    """AUPIMO unresolved everywhere (the default band on 32 px test sets): no per-category flood, one note."""
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("synth_object", "synth_texture"),
                                 seeds=(0, 1), aupimo_band=None)
    config = tmp_path / "study.json"
    config.write_text(json.dumps({"primary": [{"pair": list(FAIR_PAIR), "metric": "aupimo"},
                                              {"pair": list(FAIR_PAIR), "metric": "aupro_5pct"}]}), encoding="utf-8")
    rep = report.build_report(results, n_boot=10, config=config)
    assert "aupimo" not in set(rep.comparison.aggregate["metric"]) | set(rep.tests["metric"]) and rep.images.empty
    assert "aupro_5pct" in set(rep.comparison.aggregate["metric"])  # the other new metrics are tested
    assert not report.group_stats(rep.runs)["left_out"].str.contains("AUPIMO").any()
    assert not rep.tables["group_means"]["left out (not averaged)"].str.len().any()
    notes = [note for note in report.report_notes(rep) if "AUPIMO" in note]
    assert len(notes) == 1 and "needs at least 100,000 normal test pixels; these runs have at most 10,240" in notes[0]
    assert "--image-size" in notes[0] and "synth_object" not in notes[0]
    primary = rep.tables["primary_tests_table"].set_index("metric")
    assert primary.at["AUPIMO (mean)", "left out"] == ("every category: no run measured AUPIMO (mean) (see the "
                                                       "notes at the top)")
    assert primary.at["AUPRO to FPR 0.05", "left out"] == ""
    text = report.render_report(rep, [])
    assert text.count("AUPIMO (mean) not measured") <= 2  # the primary row's note, at most, and its sentence
    assert "No pair has per-image AUPIMO in both backbones here" in text


def test_holm_adjustment() -> None:
    adjusted = holm(pd.Series([0.01, 0.04, float("nan"), 0.03]))
    assert adjusted.tolist()[:2] + adjusted.tolist()[3:] == pytest.approx([0.03, 0.06, 0.06])
    assert pd.isna(adjusted.iloc[2])


def test_ties_at_the_ceiling_are_named_and_not_tested(tmp_path: Path) -> None:
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("synth_object",), seeds=(0,),
                                 perfect=("synth_object",))
    rep = report.build_report(results, n_boot=50)
    row = rep.tests.query("metric == 'image_auroc'").iloc[0]
    assert (row["value_a"], row["value_b"]) == (1.0, 1.0) and np.isnan(row["p_value"]) and np.isnan(row["p_bh"])
    assert row["note"].startswith("tie at the ceiling: both models reach image AUROC 1.000 on this test set")
    text = report.conclusions_markdown(rep)
    tie = next(line for line in text.splitlines() if "synth_object**, seed 0, image AUROC" in line)
    assert "not tested, tie at the ceiling" in tie and "significant" not in tie
    overall = rep.comparison.aggregate.query("group == 'overall' and metric == 'image_auroc'").iloc[0]
    assert np.isnan(overall["p_signed_rank"]) and "tied" in overall["note"]
    primary = rep.decision.primary.query("metric == 'image_auroc'").iloc[0]
    assert np.isnan(primary["p_fixed"]) and not primary["significant"]  # every cell tied: nothing to test
    sentence = claims.primary_sentence(primary)
    assert "on these categories: not tested: every cell is tied (difference 0); to new categories: cannot be " \
           "computed for this design: fewer than 2 categories" in sentence
    assert "signed-rank check not tested" in sentence and "significant" not in sentence


# ---------------------------------------------------------------------------------------------- portfolio


def test_portfolio_block_changes_alone(pair_results: Path, tmp_path: Path) -> None:
    copy, portfolio = copy_project(pair_results, tmp_path / "project"), tmp_path / "docs" / "portfolio.md"
    portfolio.parent.mkdir()
    shutil.copy(PORTFOLIO, portfolio)
    original = portfolio.read_text(encoding="utf-8")
    args = ("--results", str(copy), "--out", str(tmp_path / "out"), "--portfolio", str(portfolio), *N_BOOT)
    assert compare(*args) == 0
    first = portfolio.read_text(encoding="utf-8")
    assert outside_block(first) == outside_block(original)
    assert "](../out/figures/bars.png)" in first and "#### Conclusions" in first
    block = first.split(report.BEGIN_MARKER)[1].split(report.END_MARKER)[0]
    assert assert_claims_backed(block, tmp_path / "out" / "tables") >= 3 * 3
    metrics_path = copy / "resnet50" / "synth_object" / "seed0" / runs.METRICS_FILE
    metrics = runs.read_json(metrics_path)
    metrics["image_auroc"] = 0.5
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")
    assert compare(*args) == 0
    second = portfolio.read_text(encoding="utf-8")
    assert outside_block(second) == outside_block(original) and second != first


def test_portfolio_text_states_no_false_design_claim() -> None:
    text = PORTFOLIO.read_text(encoding="utf-8")
    hand_written = outside_block(text)[0] + outside_block(text)[1]
    assert "sized by the teacher's tap widths" not in hand_written
    assert "replaces" not in hand_written  # no comparison with a repository the reader cannot see
    assert "embed_dim" in hand_written  # the capacity matching as the guide states it


def test_portfolio_markers_are_checked_before_anything_is_written(pair_results: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    portfolio = tmp_path / "no_markers.md"
    portfolio.write_text("# a document without the generated block\n", encoding="utf-8")
    out = tmp_path / "out"
    assert compare("--results", str(pair_results), "--out", str(out), "--portfolio", str(portfolio)) == 2
    error = capsys.readouterr().err
    assert str(portfolio) in error and report.BEGIN_MARKER in error and "Traceback" not in error
    assert not out.exists()
    with pytest.raises(RDError, match="expected one line"):
        report.replace_generated_block("no markers here\n", "block", tmp_path / "x.md")
    text = f"head\r\n{report.BEGIN_MARKER}\nold\n{report.END_MARKER}\r\ntail\r\n"
    assert report.replace_generated_block(text, "new", tmp_path / "x.md") == (
        f"head\r\n{report.BEGIN_MARKER}\nnew\n{report.END_MARKER}\r\ntail\r\n")


# ---------------------------------------------------------------------------------------------- pairs and flags


def test_missing_or_empty_results_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert compare("--results", str(missing), "--out", str(tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "main.py train" in error and "main.py test" in error
    with pytest.raises(RDError, match=r"no evaluated runs .*main.py train"):
        runs.load_runs(tmp_path)


def test_pairs_from_flags_config_file_papermill_and_the_default(results: Path, tmp_path: Path) -> None:
    frame = runs.load_runs(results)
    assert comparison.resolve_pairs(frame, None) == [FAIR_PAIR]  # the fair pair, not every combination
    assert comparison.parse_pairs("convnext_tiny,resnet50") == [("convnext_tiny", "resnet50")]
    assert comparison.parse_pairs(["resnet50", "convnext_tiny"]) == [("resnet50", "convnext_tiny")]
    assert comparison.parse_pairs(["a,b", "a,c"]) == [("a", "b"), ("a", "c")]
    assert comparison.parse_pairs([["a", "b"], ("a", "c")]) == [("a", "b"), ("a", "c")]
    assert comparison.parse_pairs("") is None and comparison.parse_pairs([]) is None
    with pytest.raises(RDError, match="vit_b16"):
        comparison.resolve_pairs(frame, [("resnet50", "vit_b16")])
    with pytest.raises(RDError, match="two different backbones"):
        comparison.parse_pairs("resnet50,resnet50")
    config = tmp_path / "study.json"
    config.write_text(json.dumps({"pairs": [["resnet50", RANDOM_BACKBONE]], "epochs": 200}), encoding="utf-8")
    assert comparison.read_pairs_config(config) == [("resnet50", RANDOM_BACKBONE)]
    config.write_text(json.dumps({"pairs": "resnet50"}), encoding="utf-8")
    with pytest.raises(RDError, match=r"study.json.*pairs"):
        comparison.read_pairs_config(config)
    without_fair = frame[frame["backbone"] != "resnet50"]
    assert comparison.resolve_pairs(without_fair, None) == [("wide_resnet50_2", "convnext_tiny")]
    three = pd.concat([without_fair, frame[frame["backbone"] == "resnet50"].assign(backbone="swin_t")])
    with pytest.raises(RDError, match=r"convnext_tiny, swin_t, wide_resnet50_2.*--pair a,b"):
        comparison.resolve_pairs(three, None)


def test_unfinished_runs_and_mixed_protocols_are_flagged_in_every_table(tmp_path: Path) -> None:
    results = write_fake_results(tmp_path / "a", backbones=FAIR_PAIR, categories=("synth_object",), seeds=(0, 1),
                                 unfinished=(("resnet50", "synth_object", 1),))
    other = write_fake_results(tmp_path / "b", backbones=FAIR_PAIR, categories=("carpet",), seeds=(0, 1),
                               selection="synthetic-val")
    shutil.copytree(other / "resnet50" / "carpet", results / "resnet50" / "carpet")
    shutil.copytree(other / "convnext_tiny" / "carpet", results / "convnext_tiny" / "carpet")
    shutil.copytree(other.parent / "data" / "carpet", results.parent / "data" / "carpet")
    rep = report.build_report(results, n_boot=20)
    flag = "UNFINISHED"
    for name in ("category_metrics", "group_means", "pairwise_tests", "aggregate_tests_table", "per_defect",
                 "efficiency", "reference", "seed_power", "primary_tests_table"):
        assert rep.tables[name]["flags"].str.contains(flag).any(), name
    for numeric in (rep.comparison.aggregate, rep.comparison.tests, rep.runs.rename(columns={"unfinished": "flags"})):
        assert numeric["flags"].astype(str).str.contains(f"{flag}|True").any()
    row = rep.tables["category_metrics"].set_index(["category", "backbone"]).loc[("synth_object", "resnet50")]
    assert row["flags"] == "UNFINISHED: seed 1 (2/3 epochs)"
    assert "resnet50/synth_object/seed1" in report.unfinished_warning(rep.runs)
    assert "MIXED PROTOCOLS" in report.provenance(rep.runs)
    assert "synthetic-validation" in report.protocol_text(rep.runs.query("category == 'carpet'"))


def test_three_families_get_every_table_and_figure(tmp_path: Path) -> None:
    results = write_fake_results(tmp_path, backbones=THREE_FAMILIES, categories=("synth_object",), seeds=(0, 1),
                                 data_formats={"synth_object": "visa"})
    out = tmp_path / "out"
    assert compare("--results", str(results), "--out", str(out), "--pair", "resnet50,convnext_tiny",
                   "--pair", "resnet50,swin_t", *N_BOOT) == 0
    assert set(table(out, "category_metrics")["family"]) == {"resnet", "convnext", "swin"}
    assert set(table(out, "efficiency")["family"]) == {"resnet", "convnext", "swin"}
    for name in TABLES:
        assert not table(out, name).empty, name
    figures = {path.stem.split("_")[0] for path in (out / "figures").glob("*.png")}
    assert figures == {"forest", "bars", "roc", "pro", "hist", "gallery", "extremes", "why"}
    assert len(list((out / "figures").glob("forest_*.png"))) == 2 * 3
    assert set(table(out, "aggregate_tests")["group"]) == {"object", "overall"}


def test_two_data_formats_get_a_dataset_column(results: Path, tmp_path: Path) -> None:
    other = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("candle",), seeds=(0, 1),
                               data_formats={"candle": "visa"})
    frame = pd.concat([runs.load_runs(results), runs.load_runs(other)], ignore_index=True)
    frame = frame[frame["backbone"].isin(FAIR_PAIR)]
    groups = report.group_table(frame)
    assert "dataset" in groups.columns
    assert ("visa", "multiple instances mean") in set(zip(groups["dataset"], groups["group"]))
    assert {("mvtec", "overall mean"), ("visa", "overall mean")} <= set(zip(groups["dataset"], groups["group"]))


# ---------------------------------------------------------------------------------------------- errors and console


@pytest.mark.parametrize("name, content", [
    (runs.METRICS_FILE, "{not json"),
    (runs.CONFIG_FILE, "[1, 2]"),
    (runs.SCORES_FILE, "path,label\nx.png,7\n"),
    (runs.MAPS_FILE, "not a zip archive"),
])
def test_a_corrupt_results_file_is_one_clear_error(pair_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  name: str, content: str) -> None:
    copy = copy_project(pair_results, tmp_path / "project")
    broken = copy / "resnet50" / "synth_object" / "seed0" / name
    broken.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    assert compare("--results", str(copy), "--out", str(out), *N_BOOT) == 2
    error = capsys.readouterr().err
    messages = [line for line in error.splitlines() if line.strip() and not line.startswith("resampling")]
    assert len(messages) == 1 and messages[0].startswith("error: ")  # one paragraph, no traceback
    assert str(broken) in messages[0] and "expected" in messages[0] and "Traceback" not in error
    assert not out.exists()  # nothing half-written


def test_json_null_and_non_finite_numbers_are_read(pair_results: Path, tmp_path: Path) -> None:
    copy = copy_project(pair_results, tmp_path / "project")
    path = copy / "resnet50" / "synth_object" / "seed0" / runs.METRICS_FILE
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    data.update(threshold=None, f1_max_threshold=None)
    path.write_text(json.dumps(data).replace("null}", "null, \"extra\": -Infinity}"), encoding="utf-8")
    frame = runs.load_runs(copy).set_index(["backbone", "category", "seed"])
    assert np.isnan(frame.at[("resnet50", "synth_object", 0), "threshold"])


def test_runs_without_maps_name_the_skipped_figures_and_the_command(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("synth_object",), seeds=(0,),
                                 without_maps=("convnext_tiny",))
    assert compare("--results", str(results), "--out", str(tmp_path / "out"), *N_BOOT) == 0
    console = capsys.readouterr().out
    command = f"main.py test --results {results} --force"
    assert "Gallery for synth_object skipped: no maps.npz for convnext_tiny seed 0" in console
    assert "PRO curves for synth_object incomplete: no maps.npz for convnext_tiny seed 0" in console
    assert command in console and "ground-truth masks" not in console
    assert "Primary questions (a − b, points; Holm within the primary family" in console
    assert f"report: {tmp_path / 'out' / 'report.md'}" in console
    tests = pd.read_csv(tmp_path / "out" / "tables" / "pairwise_tests_numeric.csv").set_index("metric")
    assert command in tests.at["aupro", "note"]


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare("--help")
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {comparison.N_BOOT})" in help_text and "(default: reports/compare)" in help_text


# ---------------------------------------------------------------------------------------------- notebook


def test_tester_notebook_runs_top_to_bottom(pair_results: Path, tmp_path: Path) -> None:
    import papermill

    out = tmp_path / "notebook_report"
    executed = papermill.execute_notebook(
        str(CODE_DIR / "RD_Tester.ipynb"), str(tmp_path / "executed.ipynb"),
        parameters={"RESULTS_DIR": str(pair_results), "OUT_DIR": str(out), "PAIR": ["resnet50", "convnext_tiny"],
                    "N_BOOT": 100},
        kernel_name="python3", cwd=str(CODE_DIR), progress_bar=False,
    )
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 11
    assert (out / "report.md").is_file() and (out / "figures" / "gallery_synth_object.png").is_file()
    assert (out / "tables" / "aggregate_tests.csv").is_file()


@pytest.mark.parametrize("path", sorted(CODE_DIR.glob("*.ipynb")), ids=lambda path: path.name)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert notebook.nbformat == 4 and notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_tester_notebook_parameters_cell() -> None:
    notebook = nbformat.read(CODE_DIR / "RD_Tester.ipynb", as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    for name in ("RESULTS_DIR", "OUT_DIR", "PAIR"):
        assert f"{name} = " in first_code.source
