"""Issue 18, instrument 4: how local the teacher is (locality.py, `main.py analyse`, the report's why_locality)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import runs
import why_files
import why_locality
from evaluate import evaluate_run
from locality import LinearCKA, centre_gradients, centre_of, linear_cka, mass_radius, ring_profiles
from main import main
from recipe import TrainConfig, open_split
from sweep import select_runs
from train import train_run

BACKBONES = ("resnet50", "convnext_tiny")


# ---------------------------------------------------------------------------------------------- ERF, by hand

def _all_ones(*layers: nn.Conv2d) -> nn.Sequential:
    for layer in layers:
        nn.init.ones_(layer.weight)
    return nn.Sequential(*layers)


def test_erf_of_two_all_ones_3x3_convs_is_the_hand_computed_pyramid():
    stack = _all_ones(nn.Conv2d(3, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, padding=1, bias=False))
    _, (erf,) = centre_gradients(stack, torch.randn(2, 3, 11, 11))
    # d out(5,5) / d in(5+i, 5+j) = (number of 3x3 windows holding both) = (3 - |i|)(3 - |j|) for |i|, |j| <= 2
    # per colour channel; zero beyond (support radius 2)
    line = torch.tensor([1.0, 2, 3, 2, 1])
    expected = torch.zeros(11, 11)
    expected[3:8, 3:8] = 3 * torch.outer(line, line)
    assert torch.equal(erf[0], expected) and torch.equal(erf[1], expected)  # any input: the stack is linear

    centre = centre_of(11, 11)
    assert centre == 5.0
    profile = ring_profiles(erf, centre, centre)[0].numpy() / 3
    # rings of 1 px: d = 0 -> 9; d = 1 (x4, weight 6) and sqrt 2 (x4, weight 4) -> 40; d = 2 (x4, 3) and sqrt 5
    # (x8, 2) -> 28; sqrt 8 (x4, 1) -> 4; 81 in all
    assert profile[:4].tolist() == [9, 40, 28, 4] and profile[4:].sum() == 0
    assert mass_radius(profile, 0.5) == pytest.approx(0.5 + (0.5 * 81 - 9) / 40)  # between ring edges 0.5 and 1.5
    assert mass_radius(profile, 0.9) == pytest.approx(1.5 + (0.9 * 81 - 49) / 28)  # between 1.5 and 2.5


def test_erf_centre_of_a_strided_tap_is_the_middle_of_the_cell_it_covers():
    stack = _all_ones(nn.Conv2d(3, 1, 2, stride=2, bias=False))
    _, (erf,) = centre_gradients(stack, torch.randn(1, 3, 8, 8))
    cells = torch.zeros(8, 8)
    cells[4:6, 4:6] = 3  # feature (2, 2) of the 4x4 map sees pixels 4-5
    assert torch.equal(erf[0], cells)
    assert centre_of(4, 8) == 4.5
    profile = ring_profiles(erf, 4.5, 4.5)[0].numpy()  # the 4 pixels lie at sqrt(0.5) ~ 0.71: ring 1
    assert profile.tolist()[:2] == [0, 12]
    assert mass_radius(profile, 0.5) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- CKA

def _direct_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s definition: HSIC of the centred Gram matrices of the rows (n x n)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_linear_cka_against_a_direct_implementation_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) + 3.0  # not centred: the centring is part of what is tested
    y = x[:, :4] @ rng.normal(size=(4, 9)) + 0.5 * rng.normal(size=(60, 9))
    value = linear_cka(x, y)
    assert value == pytest.approx(_direct_cka(x, y), abs=1e-10)
    assert 0.1 < value < 0.99
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x @ rotation, y) == pytest.approx(value, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(value, abs=1e-10)
    streamed = LinearCKA()
    for rows in np.array_split(np.arange(60), 3):  # batches, as analyse feeds it
        streamed.update(torch.as_tensor(x[rows]), torch.as_tensor(y[rows]))
    assert streamed.rows == 60 and streamed.value() == pytest.approx(value, abs=1e-10)
    unrelated = linear_cka(x, rng.normal(size=(60, 9)))
    assert unrelated < value


# ---------------------------------------------------------------------------------------------- the report part

def _fake_record(results: Path, backbone: str, profile: list[float], names: list[str]) -> None:
    profiles = np.tile(np.asarray(profile, dtype=np.float64), (1, len(names), 1))  # 1 tap, every image alike
    radii = {f"erf_{name}_px": float(mass_radius(profiles[0].mean(0), f)) for name, f in (("r50", 0.5), ("r90", 0.9))}
    record = {"backbone": backbone, "category": "cat", "image_size": 8, "n_images": len(names), "val_images": names,
              "taps": [{"tap": 1, "stride_px": 4.0, "centre_y": 3.5, "centre_x": 3.5, **radii}]}
    why_files.write_locality(results, backbone, "cat", record, np.ones((1, 8, 8)), profiles)


def test_report_part_on_hand_set_profiles(tmp_path):
    import pandas as pd

    names = ["a.png", "b.png", "c.png"]
    _fake_record(tmp_path, "near", [1, 1, 0, 0], names)  # half the mass by radius 0.5: r50 0.5
    _fake_record(tmp_path, "far", [0, 0, 1, 1], names)  # half by 2.5 (ring 2 ends at 2.5): r50 2.5
    why_files.write_cka(tmp_path, "cat", "near", "far", {"taps": [{"tap": 1, "cka": 0.25, "rows": 48}]})
    frame = pd.DataFrame({"backbone": ["near", "far"], "category": ["cat", "cat"]})
    part = why_locality.part(frame, str(tmp_path), [("near", "far")])
    row = part.tables["pairs"].iloc[0]
    assert (row["r50 a (px)"], row["r50 b (px)"], row["r50 a-b (px)"]) == (0.5, 2.5, -2.0)
    assert (row["r50 ci_low"], row["r50 ci_high"]) == (-2.0, -2.0)  # identical images: nothing to resample
    assert row["cka"] == 0.25
    assert "0.5 px" in part.finding and "2.5 px" in part.finding and "[-2.0, -2.0]" in part.finding
    assert "CKA between the two at this tap 0.25" in part.finding
    assert why_locality.part(frame.assign(backbone=["x", "y"]), str(tmp_path), [("x", "y")]) is None


# ---------------------------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """resnet50 and convnext_tiny, 1 epoch at 32 px on synth_object, random teachers, evaluated."""
    folder = tmp_path_factory.mktemp("analyse")
    for backbone in BACKBONES:
        config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone=backbone, epochs=1,
                             image_size=32, batch_size=8, pretrained=False, results=str(folder / "results"),
                             checkpoints=str(folder / "checkpoints"), device="cpu")
        evaluate_run(train_run(config, quiet=True), device="cpu", save_maps=False)
    return folder / "results"


def test_analyse_writes_the_locality_and_cka_files_runs_ignore(trained, capsys):
    assert main(["analyse", "--results", str(trained), "--device", "cpu"]) == 0
    config = TrainConfig.from_record(runs.read_run_config(trained / "resnet50" / "synth_object" / "seed0"))
    normals = len(open_split(config, "val"))
    for backbone in BACKBONES:
        record = why_files.read_locality(trained, backbone, "synth_object")
        assert record["n_images"] == normals and record["source_run"].endswith("seed0")
        assert [tap["stride_px"] for tap in record["taps"]] == [4.0, 8.0, 16.0]
        assert all(0 < tap["erf_r50_px"] <= tap["erf_r90_px"] < 32 for tap in record["taps"])
        assert record["maps"].shape == (3, 32, 32) and record["profiles"].shape[:2] == (3, normals)
        radii = mass_radius(record["profiles"].mean(1), 0.5)  # the JSON's radii are those of the saved profiles
        assert radii == pytest.approx([tap["erf_r50_px"] for tap in record["taps"]])
    cka = why_files.read_cka(trained, "synth_object", *BACKBONES)
    assert len(cka["taps"]) == 3 and all(0 <= tap["cka"] <= 1 for tap in cka["taps"])
    assert why_files.cka_path(trained, "synth_object", *BACKBONES) == \
        why_files.cka_path(trained, "synth_object", *reversed(BACKBONES))

    # the new files are not runs
    assert runs.find_runs(trained) == sorted(trained / b / "synth_object" / "seed0" for b in BACKBONES)
    assert len(select_runs(trained, "all", "all", "all")) == 2 and len(runs.load_runs(trained)) == 2

    capsys.readouterr()
    assert main(["analyse", "--results", str(trained), "--device", "cpu"]) == 0
    assert "up to date, skipped" in capsys.readouterr().out
    assert main(["analyse", "--results", str(trained), "--backbones", "resnet50", "--max-images", "1",
                 "--device", "cpu"]) == 0
    assert why_files.read_locality(trained, "resnet50", "synth_object")["n_images"] == 1

    part = why_locality.part(runs.load_runs(trained), str(trained), [BACKBONES])
    assert part.figures[0].figure is not None and set(part.tables) == {"radii", "pairs"}


def test_analyse_without_runs_says_so(tmp_path, capsys):
    assert main(["analyse", "--results", str(tmp_path), "--device", "cpu"]) == 2
    assert "no trained run under" in capsys.readouterr().err
