"""Issue 20: `compare` checks the recipe the arms share (protocol.py) instead of asserting "same recipe"."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import protocol
import report
import runs
from backbones import FAIR_PAIR
from comparison import backbone_family
from errors import RDError
from fake_results import write_fake_results
from recipe import TrainConfig
from test_report import assert_claims_backed
from train import train_run

CATEGORIES = ("synth_object", "synth_texture")


def record_like_train(results: Path, change: dict[str, dict] | None = None) -> None:
    """Give the fake runs' config.json every field train records, then ``change[backbone]`` on that arm's runs."""
    for path in sorted(results.glob(f"*/*/seed*/{runs.CONFIG_FILE}")):
        config = json.loads(path.read_text(encoding="utf-8"))
        config.pop("betas", None)
        config |= {"val_fraction": 0.1, "split_seed": 0, "beta1": 0.5, "beta2": 0.999, "eval_amp": "off",
                   "fast_path": {"autocast": "off", "channels_last": True, "compile": False}, "model_knobs": {},
                   "data": {"data_format": "mvtec", "split_csv": None, "split_csv_sha256": None},
                   "val_names": [f"{config['category']}_{i:03d}.png" for i in range(4)]}
        config |= (change or {}).get(config["backbone"], {})
        path.write_text(json.dumps(config), encoding="utf-8")


def compare_report(results: Path, out: Path) -> str:
    """compare's report.md and tables (no figures: they do not carry the protocol, and are slow)."""
    built = report.build_report(results, [FAIR_PAIR], n_boot=50)
    return report.write_report(built, out, figures=[]).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The fair pair on two categories, two seeds, every setting recorded as train records it."""
    results = write_fake_results(tmp_path_factory.mktemp("study"), backbones=FAIR_PAIR, categories=CATEGORIES)
    record_like_train(results)
    return results


def test_a_shared_study_says_shared_recipe(study, tmp_path):
    text = compare_report(study, tmp_path / "out")
    assert "- Protocol of resnet50 − convnext_tiny (8 runs, from their config.json): **shared recipe**." in text
    assert text.count(f"recipe shared by the runs of each category ({len(protocol.PROTOCOL_FIELDS)} settings "
                      "checked)") >= 8  # in every provenance line, nothing left unchecked
    assert "DIFFERS" not in text and "differing" not in text
    table = pd.read_csv(tmp_path / "out" / "tables" / "runs.csv")
    assert {"lr", "betas", "batch_size", "val_fraction", "split_seed", "val_names_sha256", "split_sha256",
            "float_precision", "model_knobs"} <= set(table.columns)
    assert set(table["lr"]) == {0.005} and set(table["betas"]) == {"(0.5, 0.999)"}


def test_one_arm_with_another_lr_is_named_in_headline_and_provenance(study, tmp_path):
    results = tmp_path / "project"
    shutil.copytree(study.parent, results)
    record_like_train(results / "results", {"convnext_tiny": {"lr": 0.001}})
    text = compare_report(results / "results", tmp_path / "out")
    assert "**differing recipes: lr**; lr: convnext_tiny 0.001, resnet50 0.005 (synth_object, synth_texture)." in text
    assert text.count("**recipe DIFFERS** within a category: lr: convnext_tiny 0.001, resnet50 0.005") >= 8
    assert "same recipe" not in text.lower() and "shared recipe" not in text
    assert assert_claims_backed(text, tmp_path / "out" / "tables") > 0  # no unchecked claim word crept in
    table = pd.read_csv(tmp_path / "out" / "tables" / "runs.csv")
    assert dict(zip(table["backbone"], table["lr"])) == {"resnet50": 0.005, "convnext_tiny": 0.001}


def frame(rows: list[dict]) -> pd.DataFrame:
    """A run table of the given protocol values (every other setting shared)."""
    shared = {column: "x" for column in protocol.PROTOCOL_FIELDS} | {"dataset": "mvtec", "tuned_by": "not recorded"}
    return pd.DataFrame([shared | row for row in rows])


def test_each_category_is_compared_on_its_own_held_out_names():
    runs_frame = frame([{"backbone": b, "category": c, "seed": s, "val_names_sha256": f"names of {c}"}
                        for b in FAIR_PAIR for c in CATEGORIES for s in (0, 1)])
    assert protocol.check_protocol(runs_frame, FAIR_PAIR).kind == "shared recipe"
    runs_frame.loc[(runs_frame["backbone"] == "resnet50") & (runs_frame["seed"] == 1)
                   & (runs_frame["category"] == "synth_texture"), "val_names_sha256"] = "other names"
    check = protocol.check_protocol(runs_frame, FAIR_PAIR)
    assert check.kind == "differing recipes: held-out file names (SHA-256)"
    assert [(d.category, d.values) for d in check.differences] == [
        ("synth_texture", (("convnext_tiny", "names of synth_texture"),
                           ("resnet50", "names of synth_texture / other names")))]


def test_tuned_arms_are_named_as_such_unless_something_else_differs():
    rows = [{"backbone": b, "category": "carpet", "seed": 0, "lr": lr, "epochs": epochs, "tuned_by": "tune/tune.csv"}
            for b, lr, epochs in (("resnet50", "0.005", "200"), ("convnext_tiny", "0.001", "100"))]
    assert protocol.check_protocol(frame(rows), FAIR_PAIR).kind == "per-arm tuned recipe (tune/tune.csv)"
    rows[1]["split_seed"] = "7"
    assert protocol.check_protocol(frame(rows), FAIR_PAIR).kind == "differing recipes: split seed, epochs, lr"
    untuned = [row | {"tuned_by": "not recorded"} for row in rows[:1]] + rows[1:]
    assert protocol.check_protocol(frame(untuned), FAIR_PAIR).kind.startswith("differing recipes")


def test_model_knobs_are_compared_within_a_family_only():
    knobs = {"resnet50": "{}", "convnext_tiny": '{"embed_dim": 768}', "convnext_small": "{}"}
    runs_frame = frame([{"backbone": b, "category": "carpet", "seed": 0, "model_knobs": k} for b, k in knobs.items()])
    assert protocol.check_protocol(runs_frame, FAIR_PAIR, backbone_family).kind == "shared recipe"
    pair = ("convnext_tiny", "convnext_small")
    assert protocol.check_protocol(runs_frame, pair, backbone_family).kind == "differing recipes: model knobs"


def test_a_data_format_or_root_that_differs_is_found():
    rows = [{"backbone": b, "category": "candle", "seed": 0, "dataset": d, "data_root": r}
            for b, d, r in (("resnet50", "visa", "data/visa"), ("convnext_tiny", "csv", "data/own"))]
    assert protocol.check_protocol(frame(rows), FAIR_PAIR).kind == "differing recipes: data root, data format"


def test_runs_that_did_not_record_a_setting_leave_it_unchecked():
    runs_frame = frame([{"backbone": b, "category": "carpet", "seed": 0, "val_names_sha256": "not recorded"}
                        for b in FAIR_PAIR])
    check = protocol.check_protocol(runs_frame, FAIR_PAIR)
    assert check.kind == "shared recipe" and check.unchecked == ["val_names_sha256"]
    assert "not checked (not recorded by some runs): held-out file names" in protocol.headline_sentence(
        runs_frame, [FAIR_PAIR])


def test_same_recipe_is_refused_when_a_setting_differs():
    shared = frame([{"backbone": b, "category": "carpet", "seed": 0} for b in FAIR_PAIR])
    protocol.refuse_same_recipe("Both arms: the same recipe.", shared, "report.md")
    differing = frame([{"backbone": b, "category": "carpet", "seed": 0, "batch_size": size}
                       for b, size in zip(FAIR_PAIR, ("16", "8"))])
    with pytest.raises(RDError, match=r"report.md says \"same recipe\".*batch size: convnext_tiny 8, resnet50 16"):
        protocol.refuse_same_recipe("Both arms: the Same Recipe.", differing, "report.md")
    protocol.refuse_same_recipe("Both arms: a shared protocol.", differing, "report.md")


def test_names_digest_depends_on_the_set_only():
    assert protocol.names_digest(["b.png", "a.png"]) == protocol.names_digest(["a.png", "b.png"])
    assert protocol.names_digest(["a.png", "b.png"]) != protocol.names_digest(["a.png", "c.png"])


def test_a_trained_run_records_every_setting(synthetic_root, tmp_path):
    """A real (tiny) run: nothing of the protocol is left unrecorded, and a tuned recipe says where it came from."""
    config = TrainConfig(data_root=str(synthetic_root), category="synth_texture", backbone="resnet50", epochs=1,
                         image_size=32, batch_size=8, pretrained=False, device="cpu", results=str(tmp_path / "r"),
                         checkpoints=str(tmp_path / "c"), tuned_by="tune/tune.csv")
    directory = train_run(config, quiet=True)
    record = runs.read_run_config(directory)
    settings = protocol.recorded_settings(record)
    assert protocol.NOT_RECORDED not in settings.values(), settings
    assert settings["tuned_by"] == "tune/tune.csv" and settings["lr"] == "0.005"
    assert settings["val_names_sha256"] == protocol.names_digest(record["val_names"])
    assert settings["float_precision"] == "training float32, scoring float32"


def test_a_tuned_config_file_carries_its_tune_csv_into_the_runs(synthetic_root, tmp_path):
    import argparse

    import sweep
    import tune

    chosen = TrainConfig(data_root=str(synthetic_root), category="synth_texture", backbone="convnext_tiny", lr=0.001)
    path = tmp_path / "convnext_tiny.json"
    path.write_text(json.dumps(tune.config_file_values(chosen, ["synth_texture"], "tune/tune.csv")))
    parser = argparse.ArgumentParser()
    sweep.add_train_arguments(parser)
    configs = sweep.configs_from_args(parser.parse_args(["--config", str(path), "--seeds", "0,1"]))
    assert [(c.backbone, c.lr, c.tuned_by) for c in configs] == [("convnext_tiny", 0.001, "tune/tune.csv")] * 2
