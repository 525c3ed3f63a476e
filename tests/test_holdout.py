"""A run's validation normals are the ones its config.json records: `test` and `predict` stop with an error
naming config.json and the images when the data's hold-out no longer matches it; runs of an older rule keep theirs.

No model is trained here: validation_split needs only the record and the data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dataset import HOLDOUT_RULE, holdout_draw, split_train_val
from errors import RDError
from evaluate import validation_split
from recipe import TrainConfig

CATEGORY = "synth_object"


@pytest.fixture
def data(tmp_path: Path, synthetic_root: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / CATEGORY, root / CATEGORY)
    return root


def _setting(data: Path, run_dir: Path, record: dict) -> tuple[Path, dict, TrainConfig]:
    config = TrainConfig(data_root=str(data), category=CATEGORY, image_size=32)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, record, config


def _train_names(data: Path) -> list[str]:
    return sorted(path.name for path in (data / CATEGORY / "train" / "good").glob("*.png"))


def test_unchanged_data_gives_the_recorded_hold_out(data, tmp_path):
    recorded = split_train_val(_train_names(data))[1]
    val_set = validation_split(*_setting(data, tmp_path / "run", {"val_names": recorded, "holdout_rule": HOLDOUT_RULE}))
    assert [Path(path).name for path in val_set.paths] == recorded


def test_an_added_validation_image_stops_test_naming_config_and_image(data, tmp_path):
    recorded = split_train_val(_train_names(data))[1]
    train_dir = data / CATEGORY / "train" / "good"
    added = next(f"new_{i}.png" for i in range(1000) if holdout_draw(f"new_{i}.png") < 0.1)  # falls in validation
    shutil.copy(train_dir / "000.png", train_dir / added)
    trained_on = next(f"more_{i}.png" for i in range(1000) if holdout_draw(f"more_{i}.png") >= 0.1)
    shutil.copy(train_dir / "000.png", train_dir / trained_on)
    run_dir = tmp_path / "run"
    with pytest.raises(RDError) as caught:
        validation_split(*_setting(data, run_dir, {"val_names": recorded, "holdout_rule": HOLDOUT_RULE}))
    message = str(caught.value)
    assert str(run_dir / "config.json") in message and f"extra (held out now, not recorded: added, or trained on) " \
        f"1: {added}" in message and "missing (recorded, not held out now) 0" in message
    assert trained_on not in message  # an added image that falls in training moves nothing


def test_a_removed_validation_image_stops_test(data, tmp_path):
    recorded = split_train_val(_train_names(data))[1]
    (data / CATEGORY / "train" / "good" / recorded[0]).unlink()
    with pytest.raises(RDError, match=rf"config.json: the validation images it records no longer match .*missing "
                                      rf"\(recorded, not held out now\) 1: {recorded[0]}; extra .* 0"):
        validation_split(*_setting(data, tmp_path / "run", {"val_names": recorded, "holdout_rule": HOLDOUT_RULE}))


def test_a_run_of_an_older_rule_keeps_its_recorded_hold_out(data, tmp_path):
    names = _train_names(data)
    recorded = [name for name in names if name not in split_train_val(names)[1]][:4]  # not today's hold-out
    val_set = validation_split(*_setting(data, tmp_path / "run", {"val_names": recorded}))  # no holdout_rule
    assert [Path(path).name for path in val_set.paths] == recorded
    (data / CATEGORY / "train" / "good" / recorded[1]).unlink()
    with pytest.raises(RDError, match=rf"run/config.json: its validation images no longer match the data: .*1 recorded "
                                      rf"validation image\(s\) are not among the training images: {recorded[1]}"):
        validation_split(*_setting(data, tmp_path / "run", {"val_names": recorded}))
    with pytest.raises(RDError, match=r"config.json records no validation images \(val_names\)"):
        validation_split(*_setting(data, tmp_path / "run", {}))
