"""Issue 18 B, instruments 1-3 at the source: per-scale maps and the scale ablation, the ground-truth regions of
regions.csv, and the gradient norms of history.csv (against hand-built cases and brute force)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import metrics
import recipe
import runs
from evaluate import evaluate_run
from instruments import overlap_auc, region_table, scale_ablation
from rd_model import GaussianBlur, anomaly_map, scale_maps, sum_scales
from recipe import FastPath, TrainConfig, build_run_model, make_optimizer, seed_everything
from reference_metrics import image_auroc_naive, integrate_naive, pixel_auroc_naive
from train import train_run


def _old_anomaly_map(teacher, student, size):
    """rd_model.anomaly_map as it was before the per-scale refactor (issue 18), kept here for the parity check."""
    with torch.autocast(teacher[0].device.type, enabled=False):
        total = None
        for t, s in zip(teacher, student, strict=True):
            dot = torch.einsum("nchw,nchw->nhw", t.float(), s.float())
            norms = torch.linalg.vector_norm(t.float(), dim=1) * torch.linalg.vector_norm(s.float(), dim=1)
            distance = 1 - (dot / norms.clamp_min(1e-8)).unsqueeze(1)
            distance = F.interpolate(distance, size=tuple(size), mode="bilinear", align_corners=True)
            total = distance if total is None else total + distance
        return total.squeeze(1)


def test_the_map_is_the_sum_of_the_scale_maps_bit_for_bit():
    torch.manual_seed(3)
    teacher = [torch.randn(3, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    student = [(t + 0.4 * torch.randn_like(t)).contiguous(memory_format=torch.channels_last) for t in teacher]
    parts = scale_maps(teacher, student, (64, 64))
    assert [p.shape for p in parts] == [(3, 64, 64)] * 3
    assert torch.equal(anomaly_map(teacher, student, (64, 64)), _old_anomaly_map(teacher, student, (64, 64)))
    assert torch.equal(sum_scales(parts), (parts[0] + parts[1]) + parts[2])
    # scale k's map is 1 - cos of tap k alone, upsampled
    alone = F.interpolate(1 - F.cosine_similarity(teacher[1], student[1], dim=1).unsqueeze(1), size=(64, 64),
                          mode="bilinear", align_corners=True).squeeze(1)
    assert torch.allclose(parts[1], alone, atol=1e-6)


def _ablation_case():
    """Three scale maps over 12 images of 32 px: scale 1 carries the defect (a 6 x 6 square on the defective
    images), scales 2 and 3 are noise of the same size."""
    generator = torch.Generator().manual_seed(0)
    n, size = 12, 32
    labels = np.array([0] * 6 + [1] * 6)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    masks[6:, 10:16, 12:18] = 1
    noise = [0.3 * torch.rand(n, size, size, generator=generator) for _ in range(3)]
    per_scale = [noise[0] + masks.float(), noise[1], noise[2]]
    return per_scale, labels, masks


def test_scale_ablation_finds_the_scale_that_carries_the_defect():
    per_scale, labels, masks = _ablation_case()
    blur = GaussianBlur()
    maps = blur(sum_scales(per_scale))
    table = scale_ablation(maps, per_scale, labels, masks, blur).set_index("map")
    assert list(table.index) == ["all scales", "scale 1 only", "scale 2 only", "scale 3 only", "without scale 1",
                                 "without scale 2", "without scale 3"]
    assert table.loc["scale 1 only", "image_auroc"] == 1.0 and table.loc["scale 1 only", "aupro"] > 0.9
    assert table.loc["without scale 1", "pixel_auroc"] < 0.7 and table.loc["without scale 2", "aupro"] > 0.9
    for name, kept in {"all scales": [0, 1, 2], "scale 2 only": [1], "without scale 1": [1, 2]}.items():
        brute = blur(sum(per_scale[k] for k in kept)).numpy().astype(np.float64)  # its own summation and checks
        assert table.loc[name, "image_auroc"] == pytest.approx(image_auroc_naive(brute.max(axis=(1, 2)), labels))
        assert table.loc[name, "pixel_auroc"] == pytest.approx(pixel_auroc_naive(brute, masks.numpy()), abs=1e-6)
    without_masks = scale_ablation(maps, per_scale, labels, None, blur)
    assert without_masks["pixel_auroc"].isna().all() and without_masks["image_auroc"].notna().all()


def _drawn_masks():
    """Three 40 x 40 images (1600 px): image 0 holds a 1-px and a 4-px region, image 1 a 2 x 20 bar (40 px) and
    two pixels touching only at a corner (one 8-connected region of 2 px), image 2 none."""
    masks = np.zeros((3, 40, 40), np.uint8)
    masks[0, 5, 5] = 1
    masks[0, 20:22, 30:32] = 1
    masks[1, 10:12, 5:25] = 1
    masks[1, 30, 30] = masks[1, 31, 31] = 1
    return masks


def test_region_table_on_drawn_masks():
    masks = _drawn_masks()
    maps = np.zeros(masks.shape, np.float32)
    maps[0, 5, 5] = 0.9
    maps[0, 21, 31] = 0.4
    maps[1, 11, 7] = 0.7
    maps[1, 31, 31] = 0.2
    table = region_table(maps, masks, ["a.png", "b.png", "c.png"])
    assert table[["path", "region", "area_px"]].values.tolist() == [["a.png", 1, 1], ["a.png", 2, 4],
                                                                     ["b.png", 1, 40], ["b.png", 2, 2]]
    assert table["area_fraction"].tolist() == pytest.approx([1 / 1600, 4 / 1600, 40 / 1600, 2 / 1600])
    assert table["max_score"].tolist() == pytest.approx([0.9, 0.4, 0.7, 0.2])
    # every normal pixel is 0: a region pixel above 0 is found from FPR 0 on (1.0); a pixel at 0 ties with every
    # normal pixel, a ramp from FPR 0 to 1 whose area up to 0.3 is 0.3^2 / 2, i.e. 0.15 of the limit
    assert table["overlap_auc"].tolist() == pytest.approx([1.0, (1 + 3 * 0.15) / 4, (1 + 39 * 0.15) / 40,
                                                           (1 + 0.15) / 2], abs=1e-12)
    assert overlap_auc(np.zeros(1, np.float32), np.zeros(10, np.float32)) == pytest.approx(0.15)
    assert overlap_auc(np.ones(1, np.float32), np.zeros(10, np.float32)) == pytest.approx(1.0)
    assert region_table(maps, np.zeros_like(masks), ["a", "b", "c"]).empty


def _brute_overlap(maps: np.ndarray, masks: np.ndarray) -> list[float]:
    """Each region's PRO curve from the definition (every distinct score a threshold), integrated to FPR 0.3."""
    from scipy import ndimage

    normal = masks == 0
    thresholds = np.unique(maps)[::-1]
    fpr = np.r_[0.0, [(maps[normal] >= t).mean() for t in thresholds]]
    result = []
    for image_map, image_mask in zip(maps, masks):
        labelled, count = ndimage.label(image_mask, structure=np.ones((3, 3), dtype=int))
        for r in range(1, count + 1):
            values = image_map[labelled == r]
            pro = np.r_[0.0, [(values >= t).mean() for t in thresholds]]
            result.append(integrate_naive(fpr, pro, 0.3))
    return result


def test_overlap_auc_equals_brute_force_and_averages_to_the_aupro():
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 24, 24), np.uint8)
    masks[1, 3:9, 4:10] = 1
    masks[1, 15:17, 15:22] = 1
    masks[2, 10, 10] = 1
    masks[3, 0:12, 0:3] = 1
    masks[4, 20:24, 20:24] = 1
    maps = (np.round(rng.normal(0, 1, masks.shape) * 4) / 4 + 1.5 * masks).astype(np.float32)  # ties included
    table = region_table(maps, masks, [f"{i}.png" for i in range(6)])
    assert table["overlap_auc"].tolist() == pytest.approx(_brute_overlap(maps, masks), abs=1e-12)
    assert table["overlap_auc"].mean() == pytest.approx(metrics.aupro(maps, masks), abs=1e-12)


# ---------------------------------------------------------------------------------------------- one real run

@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """One 1-epoch ResNet-50 run at 64 px (random teacher), tested with the instruments."""
    tmp = tmp_path_factory.mktemp("instruments")
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50", epochs=1,
                         image_size=64, batch_size=8, pretrained=False, results=str(tmp / "results"),
                         checkpoints=str(tmp / "checkpoints"), checkpoint_every=1)
    run_directory = train_run(config, quiet=True)
    return config, run_directory, evaluate_run(run_directory, save_maps=False)


def test_gradient_norms_equal_the_norms_of_a_hand_replayed_epoch(trained):
    config, run_directory, _ = trained
    history = pd.read_csv(run_directory / runs.HISTORY_FILE)
    device = torch.device("cpu")
    seed_everything(config.seed, config.deterministic)  # as train.py sets up a run
    fast = FastPath.resolve(config, device)
    model, _, _ = build_run_model(config)
    fast.place(model, device)
    optimizer = make_optimizer(model, config)
    images = recipe.open_split(config, "train").uint8_images()
    norms = []
    for indices, _ in recipe.device_batches(len(images), config.batch_size, config.seed, 1, device):
        recipe.train_step(model.train(), optimizer, fast.prepare(images[indices]), fast, device)
        # float64 sums of squares: float32 sums over ~46 M values drift by up to ~1e-3 (measured)
        norms.append([math.sqrt(sum(float(p.grad.double().square().sum()) for p in part.parameters()
                                    if p.grad is not None)) for part in (model.bottleneck, model.student)])
    assert len(norms) > 1
    expected = np.mean(norms, axis=0)
    # train.py's float32 per-tensor norms are within ~1e-4 of these (history.csv keeps 6 significant digits)
    assert history[list(runs.GRAD_NORM_COLUMNS)].iloc[0].tolist() == pytest.approx(expected, rel=3e-4)
    assert (expected > 0).all()


def test_test_writes_the_instrument_files_consistent_with_its_metrics(trained):
    _, run_directory, result = trained
    scales = runs.load_scales(run_directory).set_index("map")
    assert scales.loc["all scales", "image_auroc"] == result["image_auroc"]
    assert scales.loc["all scales", "aupro"] == pytest.approx(result["aupro"], abs=1e-15)
    assert scales.loc[[f"scale {k} only" for k in (1, 2, 3)], "pixel_auroc"].between(0, 1).all()
    regions = runs.load_regions(run_directory)
    assert len(regions) > 0 and (regions["area_fraction"] == regions["area_px"] / 64 ** 2).all()
    assert regions["overlap_auc"].mean() == pytest.approx(result["aupro"], abs=1e-9)
    # without the ablation: no scales.csv (regions.csv still)
    (run_directory / runs.SCALES_FILE).unlink()
    evaluate_run(run_directory, save_maps=False, scale_ablation=False)
    assert not (run_directory / runs.SCALES_FILE).is_file()
    assert (run_directory / runs.REGIONS_FILE).is_file()
