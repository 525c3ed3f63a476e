"""The fair-comparison report (`main.py compare`), its portfolio block and the tester notebook, on fake runs."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import report
import runs
from backbones import FAIR_PAIR
from errors import RDError
from fake_results import write_fake_results
from significance import holm

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"
PORTFOLIO = CODE_DIR / "RD_Model_Comparison_Portfolio.md"
RANDOM_BACKBONE = "wide_resnet50_2"
NO_MASKS = "synth_texture"
SECTIONS = (
    "## Metrics per category and backbone",
    "## Texture, object and overall means",
    "## Overall means beside the published RD4AD numbers",
    "## Is the difference real? Paired tests of image AUROC",
    "### Conclusions",
    "## Efficiency",
    "## Figures",
)


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
        assert compare("--results", str(results), "--out", str(out)) == 0
    return outs


def outside_block(text: str) -> tuple[str, str]:
    return text.split(report.BEGIN_MARKER)[0], text.split(report.END_MARKER)[1]


def test_report_has_every_section_table_and_figure(reports: tuple[Path, Path]) -> None:
    out = reports[0]
    text = (out / "report.md").read_text(encoding="utf-8")
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert text.count("_Provenance: data ") >= 5  # one per table
    assert "image size 32 px; epochs 3; seeds 0, 1" in text and "SYNTHETIC" in text
    assert report.PUBLISHED_LABEL in text and "| 98.5 |" in text
    for name in ("category_metrics", "group_means", "reference", "pairwise_tests", "efficiency", "runs"):
        assert (out / "tables" / f"{name}.csv").is_file()
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    kinds = {Path(link).stem.split("_")[0] for link in links}
    assert kinds == {"bars", "roc", "pro", "hist", "gallery", "extremes"}
    assert all((out / link).is_file() for link in links)


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
    table = report.category_table(runs.load_runs(results)).set_index(["category", "backbone"])
    assert set(table.loc[NO_MASKS, "pixel AUROC (%)"]) == {"n/a"}
    assert set(table.loc[NO_MASKS, "AUPRO (%)"]) == {"n/a"}
    assert "n/a" not in set(table.loc["synth_object", "pixel AUROC (%)"])
    text = (reports[0] / "report.md").read_text(encoding="utf-8")
    assert f"PRO curves for {NO_MASKS} skipped" in text
    assert not (reports[0] / "figures" / f"pro_{NO_MASKS}.png").exists()


def test_delong_sentences_and_multiple_comparisons_note(reports: tuple[Path, Path]) -> None:
    text = (reports[0] / "report.md").read_text(encoding="utf-8")
    sentence = re.compile(
        r"seed \d: (no significant difference at alpha=0\.05|\w+ is higher by [0-9.]+ AUROC, significant at "
        r"alpha=0\.05) \(p=[0-9.e-]+\); the 95% CI \[[-+][0-9.]+, [-+][0-9.]+\] (includes|excludes) 0"
    )
    assert len(sentence.findall(text)) == 12  # 3 pairs x 2 categories x 2 seeds
    assert "Multiple comparisons: 4 tests for resnet50 vs convnext_tiny" in text
    assert text.index("resnet50 − convnext_tiny") < text.index("convnext_tiny − wide_resnet50_2")  # fair pair first


def test_paired_tests_join_the_same_images(results: Path, tmp_path: Path) -> None:
    copy = copy_project(results, tmp_path / "project")
    scores = copy / "resnet50" / "synth_object" / "seed0" / runs.SCORES_FILE
    lines = scores.read_text(encoding="utf-8").splitlines()
    scores.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one test image fewer
    frame = runs.load_runs(copy)
    tests = report.pairwise_tests(frame, [("resnet50", "convnext_tiny")], n_boot=200).set_index(["category", "seed"])
    assert tests.at[("synth_object", 0), "n_images"] == len(lines) - 2
    assert tests.at[("synth_object", 0), "n_unmatched"] == 1
    assert tests.at[("synth_object", 1), "n_unmatched"] == 0
    (copy / "resnet50" / "synth_texture" / "seed1" / runs.METRICS_FILE).unlink()  # trained, not tested
    rep = report.build_report(copy, pair="resnet50,convnext_tiny", n_boot=50)
    assert len(rep.runs) == 11 and "resnet50/synth_texture/seed1" in report.untested_note(rep)
    assert set(rep.tests.query("category == 'synth_texture'")["seed"]) == {0}
    original = report.pairwise_tests(runs.load_runs(results), [("resnet50", "convnext_tiny")], n_boot=200)
    assert (original["n_unmatched"] == 0).all()
    expected = runs.load_runs(results).query("backbone == 'resnet50'")["image_auroc"]
    assert sorted(original["auroc_a"]) == pytest.approx(sorted(expected))


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
    reference = report.reference_table(frame).set_index("metric (%)")[report.PUBLISHED_LABEL]
    assert reference["image AUROC"] == "98.5" and reference["AUPRO"] == "93.9" and reference["F1 @val-thr"] == "—"


def test_holm_adjustment() -> None:
    adjusted = holm(pd.Series([0.01, 0.04, float("nan"), 0.03]))
    assert adjusted.tolist()[:2] + adjusted.tolist()[3:] == pytest.approx([0.03, 0.06, 0.06])
    assert pd.isna(adjusted.iloc[2])


def test_portfolio_block_changes_alone(pair_results: Path, tmp_path: Path) -> None:
    copy, portfolio = copy_project(pair_results, tmp_path / "project"), tmp_path / "docs" / "portfolio.md"
    portfolio.parent.mkdir()
    shutil.copy(PORTFOLIO, portfolio)
    original = portfolio.read_text(encoding="utf-8")
    args = ("--results", str(copy), "--out", str(tmp_path / "out"), "--portfolio", str(portfolio))
    assert compare(*args) == 0
    first = portfolio.read_text(encoding="utf-8")
    assert outside_block(first) == outside_block(original)
    assert "](../out/figures/bars.png)" in first and "#### Conclusions" in first
    metrics_path = copy / "resnet50" / "synth_object" / "seed0" / runs.METRICS_FILE
    metrics = runs.read_json(metrics_path)
    metrics["image_auroc"] = 0.5
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")
    assert compare(*args) == 0
    second = portfolio.read_text(encoding="utf-8")
    assert outside_block(second) == outside_block(original) and second != first


def test_missing_or_empty_results_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert compare("--results", str(missing), "--out", str(tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "main.py train" in error and "main.py test" in error
    with pytest.raises(RDError, match=r"no evaluated runs .*main.py train"):
        runs.load_runs(tmp_path)


def test_pair_flag(results: Path) -> None:
    frame = runs.load_runs(results)
    assert report.backbone_pairs(frame, "convnext_tiny,resnet50") == [("convnext_tiny", "resnet50")]
    assert report.backbone_pairs(frame)[0] == FAIR_PAIR and len(report.backbone_pairs(frame)) == 3
    with pytest.raises(RDError, match="vit_b16"):
        report.backbone_pairs(frame, "resnet50,vit_b16")


def test_portfolio_markers_required(tmp_path: Path) -> None:
    with pytest.raises(RDError, match="expected one line"):
        report.replace_generated_block("no markers here\n", "block", tmp_path / "x.md")
    text = f"head\r\n{report.BEGIN_MARKER}\nold\n{report.END_MARKER}\r\ntail\r\n"
    assert report.replace_generated_block(text, "new", tmp_path / "x.md") == (
        f"head\r\n{report.BEGIN_MARKER}\nnew\n{report.END_MARKER}\r\ntail\r\n")


def test_tester_notebook_runs_top_to_bottom(pair_results: Path, tmp_path: Path) -> None:
    import papermill

    out = tmp_path / "notebook_report"
    executed = papermill.execute_notebook(
        str(CODE_DIR / "RD_Tester.ipynb"), str(tmp_path / "executed.ipynb"),
        parameters={"RESULTS_DIR": str(pair_results), "OUT_DIR": str(out), "PAIR": "resnet50,convnext_tiny"},
        kernel_name="python3", cwd=str(CODE_DIR), progress_bar=False,
    )
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 8
    assert (out / "report.md").is_file() and (out / "figures" / "gallery_synth_object.png").is_file()


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
