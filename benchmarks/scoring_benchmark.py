"""What the low-false-alarm metrics add to `main.py test`'s scoring time, measured side by side in one process.

    .venv/bin/python benchmarks/scoring_benchmark.py [--images 167] [--good 26] [--image-size 256] [--rounds 10]
                                                    [--device auto] [--threads N] [--out scoring_bench.json]

Builds the anomaly maps of one MVTec-size category (default 167 test images of which 26 good, MVTec AD's pill, its
largest test split, at 256 px): white noise through the RD map's Gaussian blur (so the maps are as smooth as RD's),
plus elliptical defects of 0.1 % to 5 % of an image that score higher in the anomalous images, and 10 validation
normals for the threshold. Then it times, in alternating rounds (best round each; half of the rounds in the reverse
order), what `test` computes from the maps and the image scores:

- before: image AUROC, F1-max, the metrics at the validation threshold, per-defect image AUROC and
  ``metrics.pixel_metrics`` (pixel AUROC and AUPRO to 0.3 from one sort), as `test` did before these metrics;
- after: the same with ``metrics.localisation_metrics`` instead (also AUPRO to 0.05, SegF1 at the threshold, the
  test-tuned SegF1-max and per-image AUPIMO), as `test` does now.

Prints both times, their ratio (target: at most 1.5), AUPIMO's own time (``metrics.aupimo`` alone, with its input
checks) and the new metrics' values (the standard ones must be identical in both paths); exit status 1 when the ratio
misses the target or a standard value differs.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

from process_setup import use_huge_pages  # noqa: E402

use_huge_pages()  # as main.py does, before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

import metrics  # noqa: E402
import runs  # noqa: E402
from rd_model import GaussianBlur, image_scores  # noqa: E402
from system_info import describe_hardware, library_versions, resolve_device  # noqa: E402
from timing import Measure, alternate  # noqa: E402

RATIO_TARGET = 1.5


def category_maps(images: int, good: int, size: int, seed: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str], torch.Tensor]:
    """(maps, uint8 masks, labels, defect types, validation maps) of a synthetic category: blurred noise, defects
    as ellipses that add 0.5 to 3 blurred noise standard deviations."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    blur = GaussianBlur().to(device)
    with torch.no_grad():
        maps = blur(torch.rand(images, size, size, generator=generator).to(device))
        validation = blur(torch.rand(10, size, size, generator=generator).to(device))
    spread = float(maps.std())
    masks = torch.zeros(images, size, size, dtype=torch.uint8)
    rows, columns = np.ogrid[:size, :size]
    for index in range(good, images):
        area = size * size * 10 ** rng.uniform(-3, math.log10(0.05))
        aspect = rng.uniform(0.3, 1.0)
        half_h, half_w = math.sqrt(area * aspect / math.pi), math.sqrt(area / aspect / math.pi)
        centre_y, centre_x = rng.uniform(0.15, 0.85, 2) * size
        inside = ((rows - centre_y) / half_h) ** 2 + ((columns - centre_x) / half_w) ** 2 <= 1.0
        masks[index] = torch.from_numpy(inside)
    masks = masks.to(device)
    maps += masks * spread * torch.from_numpy(rng.uniform(0.5, 3.0, (images, 1, 1))).float().to(device)
    labels = np.r_[np.zeros(good, dtype=int), np.ones(images - good, dtype=int)]
    defect_types = ["good"] * good + [("crack", "stain", "hole")[i % 3] for i in range(images - good)]
    return maps, masks, labels, defect_types, validation


def scoring(maps: torch.Tensor, masks: torch.Tensor, labels: np.ndarray, defect_types: list[str],
            threshold: float, new_metrics: bool) -> dict:
    """What `test` computes from the maps (evaluate.evaluate_run), with or without the new metrics."""
    scores = image_scores(maps).cpu()
    result = {"image_auroc": metrics.image_auroc(scores, labels), "f1_max": metrics.f1_max(scores, labels)[0],
              **metrics.metrics_at_threshold(scores, labels, threshold),
              "per_defect": metrics.per_defect_auroc(scores, labels, defect_types)}
    if new_metrics:
        pixel, aupimo = metrics.localisation_metrics(maps, masks, labels, threshold)
        result.update(pixel, aupimo=aupimo.mean, n_aupimo_images=int(np.isfinite(aupimo.per_image).sum()))
    else:
        result.update(metrics.pixel_metrics(maps, masks))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=167, help="test images of the category (default 167)")
    parser.add_argument("--good", type=int, default=26, help="of which good (default 26)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    maps, masks, labels, defect_types, validation = category_maps(args.images, args.good, args.image_size, args.seed,
                                                                  device)
    threshold = metrics.threshold_from_normals(image_scores(validation).cpu(), "max")
    outputs: dict[str, dict] = {}

    def path(name: str, new_metrics: bool):  # noqa: ANN202
        return lambda: outputs.__setitem__(name, scoring(maps, masks, labels, defect_types, threshold, new_metrics))

    paths = {"before": path("before", False), "after": path("after", True),
             "aupimo alone": lambda: metrics.aupimo(maps, masks, labels)}
    # the first path of a round runs measurably slower here (memory the previous round's last path gave back):
    # half of the rounds in each order, so that no path always goes first
    forward = alternate(paths, rounds=(args.rounds + 1) // 2, warmup=1, work=args.images, device=device,
                        desc="scoring")
    backward = alternate(dict(reversed(paths.items())), rounds=args.rounds // 2, warmup=0, work=args.images,
                         device=device, desc="scoring, reversed")
    measured = {name: Measure(forward[name].rounds + backward[name].rounds,
                              max(forward[name].peak_mb, backward[name].peak_mb), args.images) for name in paths}
    before, after = measured["before"].best, measured["after"].best
    ratio = after / before
    median_ratio = float(np.median(measured["after"].rounds) / np.median(measured["before"].rounds))
    standard = ("image_auroc", "f1_max", "f1", "pixel_auroc", "aupro")
    identical = all(outputs["before"][key] == outputs["after"][key] for key in standard)
    hardware = describe_hardware(device)
    defect_share = float(masks.float().mean())
    print(f"{args.images} maps ({args.good} good) at {args.image_size} px, {100 * defect_share:.2f} % defect pixels, "
          f"on {hardware.get('gpu') or hardware['cpu']} ({hardware['torch_threads']} thread(s))")
    print(f"  scoring before (pixel_metrics)          {before:8.3f} s  (best of {args.rounds})")
    print(f"  scoring after  (localisation_metrics)   {after:8.3f} s")
    print(f"  ratio after / before                    {ratio:8.2f}x  (target <= {RATIO_TARGET}; of the medians "
          f"{median_ratio:.2f}x)")
    print(f"  of which AUPIMO alone (metrics.aupimo)  {measured['aupimo alone'].best:8.3f} s")
    new = {key: outputs["after"][key] for key in ("aupro_5pct", "aupimo", "n_aupimo_images", "seg_f1", "seg_f1_max")}
    print("  new metrics: " + ", ".join(f"{key} {value:.4g}" for key, value in new.items()))
    print(f"  standard metrics identical in both paths: {identical}")
    if args.out:
        runs.atomic_write_json(args.out, {"machine": hardware, "versions": library_versions(), "images": args.images,
                                          "good": args.good, "image_size": args.image_size,
                                          "defect_pixel_share": defect_share, "before": measured["before"].as_dict(),
                                          "after": measured["after"].as_dict(),
                                          "aupimo_alone": measured["aupimo alone"].as_dict(), "ratio": ratio,
                                          "median_ratio": median_ratio,
                                          "ratio_target": RATIO_TARGET, "new_metrics": new,
                                          "standard_identical": identical})
    return 0 if ratio <= RATIO_TARGET and identical else 1


if __name__ == "__main__":
    sys.exit(main())
