"""Issue 18, instrument 4: how local the teacher is (locality.py, `main.py analyse`, the report's why_locality);
issue 23: the rings centred on the receptive-field centre the teacher's own layers give."""
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
from locality import Grid, LinearCKA, centre_gradients, linear_cka, mass_radius, ring_profiles, tap_grids
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

    ((grid, _),) = tap_grids(stack, (11, 11))
    centre = grid.centre(11)
    assert (grid, centre) == (Grid(1.0, 0.0), 5.0)
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
    assert tap_grids(stack, (8, 8))[0][0].centre(4) == 4.5
    profile = ring_profiles(erf, 4.5, 4.5)[0].numpy()  # the 4 pixels lie at sqrt(0.5) ~ 0.71: ring 1
    assert profile.tolist()[:2] == [0, 12]
    assert mass_radius(profile, 0.5) == pytest.approx(1.0)


class _Taps(nn.Module):
    """A padded stride-2 stem as ResNet's (7x7 stride-2 conv, BatchNorm, ReLU, 3x3 stride-2 max pool) and a 4x4
    stride-2 conv padded 1 (an even kernel: its cells sit half a pixel off); both outputs are taps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2, padding=3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.down = nn.Conv2d(4, 4, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stem(x)
        return [first, self.down(first)]


def _brute_force_centres(module: nn.Module, size: int) -> list[tuple[float, float]]:
    """Per tap, the middle of the input pixels its centre cell depends on: one image per pixel, that pixel NaN
    (NaN reaches every output that depends on it: no dead ReLU or cancellation hides a pixel)."""
    images = torch.zeros(size * size, 3, size, size)
    images.view(size * size, 3, -1)[torch.arange(size * size), :, torch.arange(size * size)] = float("nan")
    with torch.no_grad():
        taps = module.eval()(images)
    centres = []
    for tap in taps:
        height, width = tap.shape[-2:]
        reached = tap[:, :, height // 2, width // 2].isnan().any(1).view(size, size)
        rows, columns = reached.any(1).nonzero()[:, 0], reached.any(0).nonzero()[:, 0]
        assert 0 < rows.min() and rows.max() < size - 1 and 0 < columns.min() and columns.max() < size - 1  # uncut
        centres.append(((rows.min() + rows.max()).item() / 2, (columns.min() + columns.max()).item() / 2))
    return centres


def test_receptive_field_centres_of_a_padded_stride_2_stem_equal_brute_force():
    torch.manual_seed(0)
    module = _Taps()
    grids = tap_grids(module, (40, 40))
    with torch.no_grad():
        sizes = [tap.shape[-1] for tap in module.eval()(torch.zeros(1, 3, 40, 40))]
    placed = [(gy.centre(n), gx.centre(n)) for (gy, gx), n in zip(grids, sizes)]
    assert placed == _brute_force_centres(module, 40) == [(20.0, 20.0), (18.0, 18.0)]
    assert grids[0][0] == Grid(4.0, 0.0) and grids[1][0] == Grid(8.0, 2.0)
    # the patchify midpoint the rings used before, (i + 0.5) * stride - 0.5, is 1.5 px off on each
    assert [(n // 2 + 0.5) * 40 / n - 0.5 for n in sizes] == [21.5, 19.5]


def test_teacher_grids_resnet_at_s_i_convnext_and_swin_at_the_patchify_midpoint():
    from torchvision.models import convnext_tiny, resnet50

    from RD_ConvNeXt_Model import ConvNeXtTeacher
    from RD_Swin_Model import SwinTeacher, swin_t_teacher_model
    from resnet import ResNetTeacher

    steps = (4.0, 8.0, 16.0)
    with torch.device("meta"):  # shapes only: no weights to initialise, no arithmetic
        teachers = [ResNetTeacher(resnet50()), ConvNeXtTeacher(convnext_tiny()), SwinTeacher(swin_t_teacher_model())]
    resnet = tap_grids(teachers[0], (64, 48))
    assert [grids for grids in resnet] == [(Grid(s, 0.0), Grid(s, 0.0)) for s in steps]
    for teacher in teachers[1:]:
        grids = tap_grids(teacher, (32, 32))
        assert grids == [(Grid(s, (s - 1) / 2), Grid(s, (s - 1) / 2)) for s in steps]
        assert [g.centre(int(32 / s)) for (g, _), s in zip(grids, steps)] == \
            [(32 / s // 2 + 0.5) * s - 0.5 for s in steps]  # unchanged: the middle of the cell's patch


def test_a_tap_the_layers_cannot_place_is_an_error():
    upsampled = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.Upsample(scale_factor=3))
    with pytest.raises(ValueError, match="tap 1 .* not a convolution, pooling or patch merging"):
        tap_grids(upsampled, (16, 16))


def test_the_true_centre_shrinks_a_gaussian_erf_to_its_own_radius():
    """A sigma-10 Gaussian centred at 256 of a 512 px image, as the ERF of a ResNet tap 3 cell (16 i): its r50 is
    sigma sqrt(2 ln 2) = 11.77 around the true centre, 15.3 around the patchify midpoint 263.5."""
    coordinates = torch.arange(512, dtype=torch.float64)
    line = torch.exp(-((coordinates - 256) ** 2) / 200)
    erf = torch.outer(line, line)[None]
    assert mass_radius(ring_profiles(erf, 256.0, 256.0)[0].numpy(), 0.5) == pytest.approx(11.77, abs=0.05)
    assert mass_radius(ring_profiles(erf, 263.5, 263.5)[0].numpy(), 0.5) == pytest.approx(15.3, abs=0.1)


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

    # the rings' centres: ResNet's cells at stride x i, ConvNeXt's at the middle of their patch (32 px: 8, 4, 2 cells)
    centres = {b: [tap["centre_y"] for tap in why_files.read_locality(trained, b, "synth_object")["taps"]]
               for b in BACKBONES}
    assert centres == {"resnet50": [16.0, 16.0, 16.0], "convnext_tiny": [17.5, 19.5, 23.5]}

    # a file of the first version (rings at the patchify midpoint) is not read, is named, and is measured again
    path = why_files.locality_path(trained, "resnet50", "synth_object")
    runs.atomic_write_json(path, runs.read_json(path) | {"version": 1})
    frame = runs.load_runs(trained)
    assert why_files.read_locality(trained, "resnet50", "synth_object") is None
    assert why_locality.stale(frame, str(trained)) == ["resnet50/synth_object"]
    assert "Not read here: resnet50/synth_object" in why_locality.part(frame, str(trained), [BACKBONES]).text
    capsys.readouterr()
    assert main(["analyse", "--results", str(trained), "--backbones", "resnet50", "--max-images", "1",
                 "--device", "cpu"]) == 0
    assert "skipped" not in capsys.readouterr().out and why_locality.stale(frame, str(trained)) == []


def test_analyse_without_runs_says_so(tmp_path, capsys):
    assert main(["analyse", "--results", str(tmp_path), "--device", "cpu"]) == 2
    assert "no trained run under" in capsys.readouterr().err
