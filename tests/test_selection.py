"""Issue 10, test-free validation: the synthetic-anomaly set, --selection synthetic-val, and `main.py tune`
(CPU, 32 px, random teachers, 1-3 epochs)."""
from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import recipe
import runs
import sweep
import synthval
import train
import tune
from checkpoint import read_checkpoint
from dataset import DataWarning
from errors import CheckpointError, DataError, RDError
from evaluate import evaluate_run
from main import main
from recipe import TrainConfig
from train import train_run


def small_config(root: Path, folder: Path, **overrides) -> TrainConfig:
    base = TrainConfig(data_root=str(root), category="synth_object", backbone="resnet50", epochs=3, image_size=32,
                       batch_size=8, pretrained=False, results=str(folder / "results"),
                       checkpoints=str(folder / "checkpoints"), checkpoint_every=1, device="cpu",
                       selection="synthetic-val", val_every=2)
    return replace(base, **overrides)


def _trainable_state(path: Path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(path)
    return {f"{part}.{k}": v for part in ("bottleneck", "student") for k, v in payload[part].items()}


def _assert_same_weights(path_a: Path, path_b: Path) -> None:
    expected, actual = _trainable_state(path_a), _trainable_state(path_b)
    assert expected.keys() == actual.keys()
    for key in expected:  # BatchNorm running statistics included
        assert torch.equal(expected[key], actual[key]), key


# ---------------------------------------------------------------------------------------------- the set

def test_synthetic_set_depends_on_the_split_seed_only(synthetic_root, tmp_path, monkeypatch):
    one = small_config(synthetic_root, tmp_path / "one")
    other_arm = small_config(synthetic_root, tmp_path / "two", backbone="convnext_tiny", seed=3)
    with pytest.warns(DataWarning, match="validation normals"):
        first = synthval.load_synthetic_set(one)
    second = synthval.load_synthetic_set(other_arm)  # another backbone, seed and cache folder
    for name in ("images", "masks", "labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    cached = [sorted((Path(c.results) / synthval.CACHE_FOLDER).iterdir()) for c in (one, other_arm)]
    assert [p.name for p in cached[0]] == [p.name for p in cached[1]]
    assert cached[0][0].read_bytes() == cached[1][0].read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(synthval, "build_synthetic_set", None)  # a cache hit makes nothing
        assert torch.equal(synthval.load_synthetic_set(one).images, first.images)
    cached[0][0].write_bytes(b"truncated")
    assert torch.equal(synthval.load_synthetic_set(one).masks, first.masks)  # a damaged cache is made again
    assert cached[0][0].read_bytes() == cached[1][0].read_bytes()

    reseeded = synthval.load_synthetic_set(replace(one, split_seed=1))
    assert reseeded.images.shape != first.images.shape or not torch.equal(reseeded.images, first.images)
    assert len(list((Path(one.results) / synthval.CACHE_FOLDER).iterdir())) == 2  # keyed by the split seed


def test_the_set_blends_visible_anomalies_into_the_normals(synthetic_root, tmp_path):
    config = small_config(synthetic_root, tmp_path, image_size=64)
    with pytest.warns(DataWarning, match=r"synth_object: 6 validation normals \(fewer than 10\)"):
        synthetic = synthval.load_synthetic_set(config)
    normals = recipe.open_split(config, "val").uint8_images()
    count = len(normals)
    assert len(synthetic.images) == 3 * count and synthetic.labels.tolist() == [0] * count + [1] * 2 * count
    assert synthetic.kinds[:2 * count] == ["normal"] * count + ["texture"] * count
    assert set(synthetic.kinds[2 * count:]) <= {"scratch", "stain"}
    assert torch.equal(synthetic.images[:count], normals) and not synthetic.masks[:count].any()
    assert set(synthetic.masks.unique().tolist()) == {0, 1}
    for index in range(count, 3 * count):
        inside = synthetic.masks[index].bool()
        change = (synthetic.images[index].int() - normals[index % count].int()).abs().amax(dim=0)
        assert inside.any() and change[inside].float().mean() >= 8, index  # visible where the mask says
    areas = synthetic.masks[count:].float().mean(dim=(1, 2))
    assert areas.max() < 0.05  # small defects, not 13-64 px patches on a 64 px image


def _neighbours(array: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every pair of 4-neighbouring pixels of a 2-D array, as two equally shaped views."""
    return [(array[1:], array[:-1]), (array[:, 1:], array[:, :-1])]


def test_no_synthetic_anomaly_has_a_hard_edge():
    """At the source resolution (where the anomaly is blended), for 90 draws of each kind on a 96x128 image:
    (1) the shape's alpha never jumps from 0 to 1 between 4-neighbours: every pixel on the border of the
    anomaly (alpha > 0 next to alpha = 0) has alpha strictly between 0 and 1, and no full-strength pixel is
    within 2 px of an untouched one; (2) along the border of the binarised mask (alpha >= 0.5 next to
    alpha < 0.5), both pixels have alpha strictly between 0 and 1; (3) pixels with blending weight 0 are left
    exactly as they were, and the weight never exceeds the alpha. Sizes reach below 0.1 % of the image."""
    rng = np.random.default_rng(7)
    normal = rng.integers(60, 200, size=(96, 128, 3)).astype(np.uint8)
    donor = rng.integers(0, 256, size=(80, 100, 3)).astype(np.uint8)  # another size: resized to the normal's
    areas = []
    for kind in ("texture", "scratch", "stain"):
        for draw in range(90):
            anomalous, alpha, weight = synthval.draw_anomaly(normal, donor, kind,
                                                             np.random.default_rng([len(kind), draw]))
            assert alpha.shape == weight.shape == normal.shape[:2] and alpha.max() > 0
            for a, b in _neighbours(alpha):
                assert not ((a == 1) & (b == 0)).any() and not ((a == 0) & (b == 1)).any(), (kind, draw)
                binary_border = (a >= 0.5) != (b >= 0.5)
                assert ((a[binary_border] > 0) & (a[binary_border] < 1)).all(), (kind, draw)
                assert ((b[binary_border] > 0) & (b[binary_border] < 1)).all(), (kind, draw)
            full, untouched = alpha == 1, alpha == 0
            for shift in (1, 2):
                assert not (full[shift:] & untouched[:-shift]).any() and not (full[:-shift] & untouched[shift:]).any()
                assert not (full[:, shift:] & untouched[:, :-shift]).any()
                assert not (full[:, :-shift] & untouched[:, shift:]).any()
            assert (weight <= alpha).all() and np.array_equal(anomalous[weight == 0], normal[weight == 0])
            areas.append(float((alpha >= 0.5).mean()))
    assert min(areas) < 0.001 and max(areas) < 0.06


def _train_paths(root: Path, category: str) -> list[str]:
    return sorted(str(path) for path in (root / category / "train" / "good").glob("*.png"))


def _tinted_copies(paths: list[str], folder: Path) -> list[str]:
    """Each grayscale image as RGB g * (1, 0.8, 0.5): one hue (36 degrees) at every pixel bright enough to show it."""
    folder.mkdir(parents=True)
    for path in paths:
        gray = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        Image.fromarray(np.rint(gray[..., None] * [1.0, 0.8, 0.5]).astype(np.uint8)).save(folder / Path(path).name)
    return [str(folder / Path(path).name) for path in paths]


def _hue_bins(pixels: np.ndarray, min_chroma: int) -> np.ndarray:
    """The 10-degree HSV hue bins (0-35) of those uint8 RGB ``pixels`` (N, 3) whose chroma (highest channel minus
    lowest) is at least ``min_chroma`` levels (below about 16, rounding alone moves a hue by several degrees)."""
    rgb = pixels.astype(np.float64)
    high, chroma = rgb.max(axis=1), np.ptp(rgb, axis=1)
    rgb, high, chroma = rgb[chroma >= min_chroma], high[chroma >= min_chroma], chroma[chroma >= min_chroma]
    r, g, b = rgb.T
    sector = np.where(high == r, ((g - b) / chroma) % 6,
                      np.where(high == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    return (sector * 6).astype(int) % 36  # 60 degrees a sector, 10 degrees a bin


def test_grayscale_normals_give_grayscale_anomalies(synthetic_root):
    """synth_texture is grayscale (1-channel PNGs): every synthetic anomaly keeps equal channels (version 2 coloured
    all of them through its per-channel jitter), even with a colour donor (taken as its luma) or a stain."""
    paths = _train_paths(synthetic_root, "synth_texture")
    synthetic = synthval.build_synthetic_set(paths[:8], paths[8:], 0, 32)
    images = synthetic.images.int()
    assert synthetic.grayscale and synthetic.labels.tolist() == [0] * 8 + [1] * 16
    assert (images[:, 1:] == images[:, :1]).all()  # normals and anomalies alike
    assert all(synthetic.masks[index].any() for index in range(8, 24))
    normal = np.asarray(Image.open(paths[0]).convert("RGB"))
    donor = np.asarray(Image.open(_train_paths(synthetic_root, "synth_object")[0]).convert("RGB"))  # colour
    for kind in ("texture", "scratch", "stain"):
        for draw in range(8):
            anomalous, _, weight = synthval.draw_anomaly(normal, donor, kind, np.random.default_rng([len(kind), draw]))
            assert weight.max() > 0 and (anomalous[..., 1:] == anomalous[..., :1]).all(), (kind, draw)
    colour = synthval.build_synthetic_set(_train_paths(synthetic_root, "synth_object")[:2], paths[:2], 0, 32)
    assert not colour.grayscale


def test_colour_anomalies_keep_the_normals_hues_and_their_shapes(synthetic_root, tmp_path):
    """On colour trees no anomaly brings a hue its category's normals lack. Measure: HSV hue in 10-degree bins; the
    normals' support is the bins that the training normals' pixels (validation normals and donors) with chroma
    (highest channel minus lowest) >= 16 levels fill; every anomaly pixel inside its mask with chroma >= 32 must
    fall in it (the twice higher bar: a stain or scratch may brighten a faint normal hue). Trees: a tinted copy of
    synth_texture (one hue, a single bin: version 2's per-channel jitter put many of those pixels outside it) and
    synth_object (a washer on a background); and 24 draws on one tinted image, where stains and scratches brighten
    past 255 (clipping channel by channel would move the hue to 40-60 degrees). The fill is all that changed: the
    same draws give the same shape and blending weight on a gray, a tinted and a colour image."""
    gray_paths = _train_paths(synthetic_root, "synth_texture")
    tinted = _tinted_copies(gray_paths, tmp_path / "tinted")
    for paths in (tinted, _train_paths(synthetic_root, "synth_object")):
        normals = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
        support = np.unique(_hue_bins(normals.reshape(-1, 3), 16))
        synthetic = synthval.build_synthetic_set(paths[:8], paths[8:], 0, 64)
        anomalies = synthetic.images[8:].permute(0, 2, 3, 1).numpy()
        inside = _hue_bins(anomalies[synthetic.masks[8:].numpy().astype(bool)], 32)
        assert len(inside) > 100 and not synthetic.grayscale
        assert np.isin(inside, support).all(), (paths[0], np.setdiff1d(inside, support), support)
        if paths is tinted:
            assert support.tolist() == [3]  # 36 degrees
    images = [np.asarray(Image.open(path).convert("RGB"))
              for path in (gray_paths[1], tinted[1], _train_paths(synthetic_root, "synth_object")[1])]
    for kind in ("texture", "scratch", "stain"):
        for draw in range(8):
            drawn = [synthval.draw_anomaly(image, images[1], kind, np.random.default_rng([5, len(kind), draw]))
                     for image in images]
            for _, shape, weight in drawn[1:]:
                assert np.array_equal(shape, drawn[0][1]) and np.array_equal(weight, drawn[0][2]), (kind, draw)
            changed = drawn[1][0][drawn[1][2] > 0]  # on the tinted image, with a tinted donor, brightened or not
            assert set(_hue_bins(changed, 32).tolist()) <= {3}, (kind, draw)


# ---------------------------------------------------------------------------------------------- selection rule

def test_selection_rule_prefers_aupro_then_image_auroc_then_the_earlier_epoch():
    def row(epoch, aupro, image_auroc):
        return {"epoch": epoch, "synth_aupro": aupro, "synth_image_auroc": image_auroc, "synth_pixel_auroc": 0.5}

    assert synthval.select_epoch([row(1, 0.3, 0.9), row(2, 0.4, 0.1)])["epoch"] == 2  # AUPRO first
    assert synthval.select_epoch([row(1, 0.4, 0.9), row(2, 0.4, 0.8)])["epoch"] == 1  # tie: image AUROC
    assert synthval.select_epoch([row(1, 0.4, 0.9), row(2, 0.4, 0.9), row(3, 0.1, 1.0)])["epoch"] == 1  # earlier
    saturated = [row(epoch, 1.0, 1.0) for epoch in (10, 20, 30)]
    assert synthval.select_epoch(saturated[::-1])["epoch"] == 10  # whatever the row order
    skipped = [row(1, None, None), row(2, float("nan"), float("nan")), row(3, 0.2, 0.5)]
    assert synthval.select_epoch(skipped) == {"epoch": 3, "synth_aupro": 0.2, "synth_image_auroc": 0.5,
                                              "synth_pixel_auroc": 0.5}
    assert synthval.select_epoch([row(1, None, None)]) is None

    settings = [tune.Setting(lr, 0.5, 2) for lr in (0.001, 0.005, 0.01)]
    scores = pd.DataFrame([{"backbone": "b", "category": c, "seed": 0, "setting": s.name, "synth_aupro": a,
                            "synth_image_auroc": i, "synth_pixel_auroc": 0.5}
                           for c, s, a, i in [("x", settings[0], 0.4, 0.7), ("x", settings[1], 0.4, 0.8),
                                              ("x", settings[2], 0.4, 0.8), ("y", settings[0], 0.2, 0.5),
                                              ("y", settings[1], 0.1, 0.5), ("y", settings[2], 0.1, 0.9)]])
    per_category = tune.choose(scores, settings, pooled=False)
    chosen = per_category[per_category["chosen"] == 1]
    # x: AUPRO tie, image AUROC tie between 0.005 and 0.01 -> the earlier grid entry; y: AUPRO decides
    assert chosen[["category", "lr"]].values.tolist() == [["x", 0.005], ["y", 0.001]]
    schedules = [tune.Setting(0.005, 0.5, epochs) for epochs in (200, 100, 300)]
    tied = pd.DataFrame([{"backbone": "b", "category": "x", "seed": 0, "setting": s.name, "synth_aupro": 1.0,
                          "synth_image_auroc": 1.0, "synth_pixel_auroc": 1.0} for s in schedules])
    assert tune.choose(tied, schedules, pooled=False).query("chosen == 1")["epochs"].tolist() == [100]  # shorter
    pooled = tune.choose(scores, settings, pooled=True)
    assert pooled.loc[pooled["chosen"] == 1, "lr"].tolist() == [0.001]  # mean AUPRO 0.3 vs 0.25 vs 0.25
    assert pooled["category"].unique().tolist() == [tune.POOLED]


def test_bad_selection_settings_are_refused(synthetic_root, tmp_path):
    with pytest.raises(RDError, match="--val-every 0"):
        synthval.check_settings(small_config(synthetic_root, tmp_path, val_every=0))
    with pytest.raises(RDError, match="--selection 'best'.*synthetic-val"):
        train_run(small_config(synthetic_root, tmp_path, selection="best"))


# ---------------------------------------------------------------------------------------------- training

def test_validation_changes_no_weight_and_a_killed_run_resumes_exactly(synthetic_root, tmp_path, monkeypatch):
    silent = small_config(synthetic_root, tmp_path / "silent", selection="last")
    with monkeypatch.context() as patch:  # the reference: no synthetic validation at all
        patch.setattr(synthval.SyntheticValidation, "columns",
                      lambda self, *args: dict.fromkeys(runs.SYNTH_VAL_COLUMNS))
        train_run(silent, quiet=True)

    reference = small_config(synthetic_root, tmp_path / "reference")
    train_run(reference, quiet=True)
    _assert_same_weights(silent.checkpoint_path, reference.checkpoint_path)
    recorded = runs.read_json(reference.run_dir / runs.CONFIG_FILE)["synthetic_set"]
    assert recorded == {"generator_version": synthval.GENERATOR_VERSION, "grayscale": False}  # synth_object: RGB

    history = pd.read_csv(reference.run_dir / runs.HISTORY_FILE)
    assert list(history.columns) == list(runs.HISTORY_COLUMNS)
    synthetic = history[list(runs.SYNTH_VAL_COLUMNS)]
    assert synthetic.iloc[0].isna().all() and synthetic.iloc[1:].notna().all().all()  # epochs 2 and 3 (the last)
    assert ((synthetic.iloc[1:] >= 0) & (synthetic.iloc[1:] <= 1)).all().all()
    best = synthval.select_epoch(history.to_dict("records"))
    saved = read_checkpoint(reference.best_checkpoint_path)["training_state"]
    assert saved["epoch"] == best["epoch"] and saved["synth_aupro"] == pytest.approx(best["synth_aupro"], abs=1e-6)

    resumed = small_config(synthetic_root, tmp_path / "resumed")
    real_step, calls = recipe.train_step, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # 3 batches per epoch (20 images, batch 8): the 2nd batch of epoch 3
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe, "train_step", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_run(resumed, quiet=True)
    assert read_checkpoint(resumed.checkpoint_path)["training_state"]["epoch"] == 2
    monkeypatch.setattr(recipe, "train_step", real_step)
    train_run(resumed, quiet=True)

    _assert_same_weights(reference.checkpoint_path, resumed.checkpoint_path)
    _assert_same_weights(reference.best_checkpoint_path, resumed.best_checkpoint_path)
    resumed_history = pd.read_csv(resumed.run_dir / runs.HISTORY_FILE)
    columns = ["epoch", "loss", "val_loss", *runs.SYNTH_VAL_COLUMNS]
    pd.testing.assert_frame_equal(history[columns], resumed_history[columns])
    assert read_checkpoint(resumed.checkpoint_path)["training_state"]["synthetic_best"]["epoch"] == best["epoch"]

    result = evaluate_run(reference.run_dir, device="cpu")
    assert (result["selection"], result["selected_epoch"], result["epochs"]) == ("synthetic-val", best["epoch"], 3)
    with pytest.raises(CheckpointError, match="selection: 'synthetic-val' -> 'last'"):
        train_run(replace(reference, selection="last"), quiet=True)


def test_a_kill_between_last_and_best_checkpoint_is_repaired(synthetic_root, tmp_path, monkeypatch):
    """A new best writes last.pth, then best.pth: killed in between, the resumed run writes best.pth itself."""
    def improving(model, synthetic, fast, device, batch_size):  # every epoch is the best so far
        improving.calls += 1
        return dict(zip(runs.SYNTH_VAL_COLUMNS, (0.5, 0.5, 0.1 * improving.calls)))

    improving.calls = 0
    monkeypatch.setattr(synthval, "score_synthetic", improving)
    real_save = train._save_best_checkpoint

    def killed_at_epoch_two(config, model, weights_id, best, *rest):
        if best["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill")
        real_save(config, model, weights_id, best, *rest)

    config = small_config(synthetic_root, tmp_path, epochs=2, val_every=1, checkpoint_every=5)
    monkeypatch.setattr(train, "_save_best_checkpoint", killed_at_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, quiet=True)
    assert read_checkpoint(config.best_checkpoint_path)["training_state"]["epoch"] == 1
    monkeypatch.setattr(train, "_save_best_checkpoint", real_save)
    train_run(config, quiet=True)  # complete: skipped, but best.pth is brought up to epoch 2
    assert read_checkpoint(config.best_checkpoint_path)["training_state"]["epoch"] == 2
    _assert_same_weights(config.checkpoint_path, config.best_checkpoint_path)


# ---------------------------------------------------------------------------------------------- no test image

def _garbage_test_folders(source: Path, destination: Path, category: str) -> Path:
    """A copy of one category whose test images and masks are garbage bytes: any decode fails."""
    shutil.copytree(source / category, destination / category)
    spoiled = [path for folder in ("test", "ground_truth") for path in (destination / category / folder).rglob("*")
               if path.is_file()]
    assert spoiled
    for path in spoiled:
        path.write_bytes(b"not an image " * 7)
    return destination


def test_train_and_tune_never_read_a_test_image(synthetic_root, tmp_path, monkeypatch):
    root = _garbage_test_folders(synthetic_root, tmp_path / "data", "synth_texture")
    opened: list[str] = []
    real_open = Image.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    common = ["--data-root", str(root), "--backbones", "resnet50", "--categories", "synth_texture", "--image-size",
              "32", "--batch-size", "8", "--no-pretrained", "--device", "cpu", "--no-eta"]
    results = tmp_path / "results"
    assert main(["train", *common, "--epochs", "2", "--selection", "synthetic-val", "--val-every", "1",
                 "--results", str(results), "--checkpoints", str(tmp_path / "checkpoints")]) == 0
    out = tmp_path / "tune"
    assert main(["tune", *common, "--epochs", "1", "--lr", "0.001,0.005", "--out", str(out)]) == 0
    assert main(["tune", *common, "--epochs", "1", "--lr", "0.001,0.005", "--out", str(out), "--pooled"]) == 0
    category = (root / "synth_texture").resolve()
    parts = [Path(path).resolve().relative_to(category).parts[0] for path in opened]
    assert parts and set(parts) == {"train"}  # train/good only: neither test/ nor ground_truth/
    with pytest.raises(DataError, match="unreadable image"):  # the garbage is found by whatever reads it
        evaluate_run(results / "resnet50" / "synth_texture" / "seed0", device="cpu")

    table = pd.read_csv(out / "tune.csv")  # the --pooled call's; both calls reused the same two runs
    assert table["lr"].tolist() == [0.001, 0.005] and table["chosen"].sum() == 1
    assert set(table["category"]) == {tune.POOLED} and table[list(runs.SYNTH_VAL_COLUMNS)].notna().all().all()
    assert len(pd.read_csv(out / "tune_runs.csv")) == 2 and len(list((out / "runs").iterdir())) == 2
    chosen_lr = float(table.loc[table["chosen"] == 1, "lr"].iloc[0])
    for path in (out / "configs" / "resnet50.json", out / "configs" / "resnet50" / "synth_texture.json"):
        parser = argparse.ArgumentParser()
        sweep.add_train_arguments(parser)
        configs = sweep.configs_from_args(parser.parse_args(["--config", str(path)]))
        assert [(c.backbone, c.category, c.seed, c.epochs, c.image_size, c.pretrained) for c in configs] == \
            [("resnet50", "synth_texture", 0, 1, 32, False)]
        assert configs[0].results == "results"  # tune's own folders stay out of the study's config
        if path.name == "resnet50.json":
            assert configs[0].lr == chosen_lr
        assert math.isfinite(configs[0].lr) and json.loads(path.read_text())["categories"] == ["synth_texture"]
