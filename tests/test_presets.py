"""The study presets under configs/: each loads, every value passes the same checks as the command line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import sweep
from backbone_facts import split_arm
from backbones import BACKBONES

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
NAMES = {"paper_wrn50", "fair_pair", "fair_pair_pretrain_matched", "big_pair", "full_study", "three_families",
         "method_study"}


def train_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_presets_are_there():
    assert {path.stem for path in PRESETS} == NAMES


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_validates(path, synthetic_root):
    raw = json.loads(path.read_text())
    sweeps = sweep.read_config_file(str(path))
    methods = {s.get("method", "rd") for s in sweeps}
    for pair in raw.get("pairs", []):  # arm labels: a backbone of the file under one of its methods
        arms = [split_arm(name) for name in pair]
        assert len(pair) == 2 and all(b in raw["backbones"] and b in BACKBONES and m in methods for b, m in arms)
    assert all(s["epochs"] == 200 and s["image_size"] == 256 and s["batch_size"] == 16 for s in sweeps)
    # the same file with the data pointed at generated data: every run config is built and checked
    configs = sweep.configs_from_args(train_args("--config", str(path), "--data-root", str(synthetic_root),
                                                 "--format", "auto", "--categories", "synth_object"))
    assert len(configs) == len(sweeps) * len(raw["backbones"]) * len(raw["seeds"])
    assert {c.backbone for c in configs} == set(raw["backbones"]) and all(c.lr == 0.005 for c in configs)
    assert {c.method for c in configs} == methods
    datasets = {c.results: set() for c in configs}
    for config in configs:
        datasets[config.results].add(config.data_root)
    # one results folder per dataset: categories never collide (the methods of one dataset share a folder)
    assert all(len(roots) == 1 for roots in datasets.values())
    assert len(datasets) == len({s.get("results") for s in sweeps})


def test_bad_config_files_name_the_field(tmp_path, synthetic_root):
    cases = {
        "[1, 2]": "expected a JSON object of settings, got a list",
        '{"epochs": "3"}': "field 'epochs' of --config .*: expected a whole number",
        '{"epochs": 0}': "field 'epochs' of --config .*'?0'?: expected at least 1",
        '{"lr": -1}': "field 'lr' .* expected more than 0",
        '{"model_knobs": {"embed": 1}, "backbones": "convnext_tiny"}': "embed: not a knob of convnext_tiny.*embed_dim",
        '{"epoch": 3}': "unknown keys \\['epoch'\\]",
        '{"sweeps": []}': "must be a non-empty list",
        "{not json": "not valid JSON",
    }
    for number, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{number}.json"
        path.write_text(text)
        with pytest.raises(sweep.RDError, match=message):
            sweep.configs_from_args(train_args("--config", str(path), "--data-root", str(synthetic_root)))
    with pytest.raises(sweep.RDError, match="--batch-size 1: expected at least 2"):
        sweep.configs_from_args(train_args("--data-root", str(synthetic_root), "--batch-size", "1"))
