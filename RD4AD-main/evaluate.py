"""Evaluation (``main.py test``): score a trained run's test split and write its metrics and scores.

Maps are computed in batches on the run's device into one float32 (N, H, W) tensor that stays there
until the metrics (pixel AUROC and AUPRO share one sort); nothing is copied per metric. The decision
threshold comes from the held-out validation normals only (``--threshold-rule``, default ``max``:
the largest validation normal score, so no validation normal is flagged).

The network runs in float32 (TF32 convolutions allowed on CUDA) unless ``--eval-amp bf16`` asks for
bf16 autocast: RD's maps are small teacher-student differences, which bf16 features perturb (``main.py
bench`` reports the metric change it causes beside the speed it buys). Maps, blur and metrics are
float32 in any case.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import instruments
import layout_metrics
import metrics
import runs
from backbone_facts import DEFAULT_METHOD, arm_label
from capacity import count_parameters, forward_gflops
from checkpoint import model_from_checkpoint
from dataset import HOLDOUT_RULE, VALIDATION_FOLDER_RULE, AnomalyDataset
from errors import CheckpointError, DataError, RDError
from rd_model import ReverseDistillation, image_scores
from recipe import EvalAmp, FastPath, TrainConfig, open_split
from sweep import add_common_arguments, checkpoint_epoch, select_runs
from system_info import peak_memory_mb, reset_peak_memory, resolve_device, synchronize
from timing import warm_up_batch_sizes

__all__ = ["LOCALISATION_KEYS", "add_arguments", "evaluate_run", "metrics_table", "pin_for", "pixel_entries",
           "rethreshold", "run", "score_images", "threshold_rule", "validation_split"]

# metrics.json keys of the low-false-alarm pixel metrics (null without masks; docs/reproduction.md#4-metrics)
LOCALISATION_KEYS = (*(metrics.aupro_key(limit) for limit in metrics.AUPRO_LIMITS if limit != 0.3), "aupimo",
                     "n_aupimo_images", "seg_f1", "seg_f1_max", "seg_f1_max_threshold")


@torch.no_grad()
def score_images(model: ReverseDistillation, images: torch.Tensor, fast: FastPath, device: torch.device,
                 batch_size: int = 16, desc: str = "scoring", scales: list[list[torch.Tensor]] | None = None
                 ) -> torch.Tensor:
    """Smoothed anomaly maps (N, H, W), float32 on ``device``, of uint8 images (N, 3, H, W).

    The network runs at the scoring precision of ``fast`` (``fast.scoring()``: float32 unless --eval-amp
    bf16), whichever training settings ``fast`` holds, so that test, predict and the validation done while
    training score alike. Leaves ``model`` in eval mode. With a list ``scales``, each batch's unsmoothed
    per-scale maps (whose blurred sum is its map) are appended to it (the scale ablation, instruments.py).
    """
    model.eval()
    scoring = fast.scoring()
    source = pin_for(images, device)
    maps = torch.empty((len(images), *images.shape[-2:]), dtype=torch.float32, device=device)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        batch = scoring.prepare(source[start:start + batch_size].to(device, non_blocking=True))
        with scoring.autocast(device):
            if scales is None:
                maps[start:start + len(batch)] = model.anomaly_map(batch)
            else:
                maps[start:start + len(batch)], per_scale = model.anomaly_map_and_scales(batch)
                scales.append(per_scale)
    return maps


def pin_for(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host images in page-locked memory when they go to a GPU, so that the per-batch copies are truly
    asynchronous (from pageable memory ``non_blocking`` does nothing); anything else unchanged. Pin a set once
    before scoring it several times (its slices stay pinned): ``score_images`` then pins nothing."""
    if device.type == "cuda" and images.device.type == "cpu" and not images.is_pinned():
        return images.pin_memory()
    return images


def pixel_entries(pixel: dict[str, float], aupimo: metrics.Aupimo) -> dict[str, Any]:
    """metrics.json's entries of ``metrics.localisation_metrics``: the values, AUPIMO's mean, band and count
    (None with the reason when its band is not resolved), and what each new number is."""
    resolved = aupimo.resolved
    return {**pixel, "aupimo": aupimo.mean if resolved else None,
            "n_aupimo_images": int(np.isfinite(aupimo.per_image).sum()), "aupimo_fpr_band": list(aupimo.fpr_band),
            "aupimo_note": aupimo.note() or (
                f"mean over the anomalous test images of their AUPIMO ({runs.AUPIMO_FILE}): recall against the FPR "
                f"over the {aupimo.n_normal_pixels} pixels of the normal test images, log-FPR band "
                f"{aupimo.fpr_band[0]:g} to {aupimo.fpr_band[1]:g} (lowest resolved FPR {aupimo.lowest_fpr:.3g})"),
            "seg_f1_note": "pixel F1 over all test pixels, a pixel flagged when its map value > threshold (the "
                           "validation threshold: no test label used)",
            "seg_f1_max_note": "test-tuned: the best pixel F1 over all thresholds on the test set (optimistic)"}


def _history_stats(run_directory: Path) -> dict[str, float | None]:
    history = runs.read_history(run_directory)
    peak = None if history is None else float(history["peak_memory_mb"].max())
    return {"train_images_per_s": runs.steady_images_per_s(history), "peak_memory_mb": peak}


def _listed(names: list[str]) -> str:
    return f"{len(names)}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"


def validation_split(run_directory: str | Path, record: dict[str, Any], config: TrainConfig) -> AnomalyDataset:
    """The run's validation normals as its config.json records them (``val_names``): the images its threshold
    may come from, never trained on. Under the current hold-out rule (or a layout's validation folder, whose images
    the run recorded) the data's hold-out must still be that
    record (an RDError names config.json and the missing and extra images otherwise); a run of an older rule
    (no ``holdout_rule`` recorded) keeps its recorded names, each of which must still be a training image."""
    config_file = Path(run_directory) / runs.CONFIG_FILE
    recorded = record.get("val_names")
    if not isinstance(recorded, list) or not recorded:
        raise RDError(f"{config_file} records no validation images (val_names); expected a run trained by "
                      f"`main.py train` (train it again with --restart)")
    if record.get("holdout_rule") not in (HOLDOUT_RULE, VALIDATION_FOLDER_RULE):
        try:
            return open_split(config, "val", recorded)
        except DataError as error:
            raise RDError(f"{config_file}: its validation images no longer match the data: {error}; restore them, "
                          f"or train the run again with --restart") from None
    current = open_split(config, "val")
    missing = sorted(set(recorded) - set(current.val_names))
    extra = sorted(set(current.val_names) - set(recorded))
    if missing or extra:
        raise RDError(
            f"{config_file}: the validation images it records no longer match the data in {config.data_root} "
            f"({config.category}): missing (recorded, not held out now) {_listed(missing)}; extra (held out now, "
            f"not recorded: added, or trained on) {_listed(extra)}. Its threshold would come from other images than "
            f"the ones it held out; restore the data as it was, or train the run again with --restart")
    return current


def evaluate_run(run_directory: str | Path, device: str = "auto", save_maps: bool = True,
                 threshold_rule: str = "max", batch_size: int = 16, image_size: int | None = None,
                 eval_amp: str = EvalAmp.OFF.value, scale_ablation: bool = True) -> dict[str, Any]:
    """Evaluate one run directory; writes metrics.json, scores.csv, val_scores.csv (and maps.npz), and the
    instruments' regions.csv (with masks) and scales.csv (``scale_ablation``; instruments.py).

    ``eval_amp`` is the network's precision here (float32 unless "bf16"), whatever the run trained with.
    """
    run_directory = Path(run_directory)
    record = runs.read_run_config(run_directory)
    config = TrainConfig.from_record(record)
    if image_size is not None and image_size != config.image_size:
        raise CheckpointError(f"--image-size {image_size} differs from the run's training size {config.image_size} "
                              f"({run_directory / runs.CONFIG_FILE}); evaluate at the training size")
    selected = config.selected_checkpoint_path  # last.pth, or best.pth under --selection synthetic-val
    if not selected.is_file():
        raise CheckpointError(f"{config.key} has no checkpoint at {selected}: run `main.py train` "
                              f"for it before `main.py test`")
    torch_device = resolve_device(device)
    torch.backends.cudnn.benchmark = True  # one input size for the whole split: let cuDNN pick its kernels
    model, payload = model_from_checkpoint(selected, config.backbone, config.image_size, config.method)
    selected_epoch = int(payload["training_state"].get("epoch", 0))
    trained_epochs = checkpoint_epoch(config.checkpoint_path) if selected != config.checkpoint_path else selected_epoch
    fast = FastPath.resolve(replace(config, eval_amp=eval_amp), torch_device).scoring()
    fast.place(model, torch_device)

    test_set, val_set = open_split(config, "test"), validation_split(run_directory, record, config)
    # pinned once, before the warm-up: not again by every call below, and never in the timed pass
    test_images, masks = pin_for(test_set.uint8_images(), torch_device), test_set.uint8_masks()[:, 0]

    reset_peak_memory(torch_device)
    val_scores = image_scores(score_images(model, val_set.uint8_images(), fast, torch_device, batch_size,
                                           "validation")).cpu()
    # untimed: one batch of each size the timed pass meets (cuDNN autotunes each new shape on its first call)
    warm_up_batch_sizes(lambda size: score_images(model, test_images[:size], fast, torch_device, batch_size, "warm-up"),
                        len(test_images), batch_size)
    synchronize(torch_device)
    started = time.perf_counter()
    per_scale: list[list[torch.Tensor]] | None = [] if scale_ablation else None
    maps = score_images(model, test_images, fast, torch_device, batch_size, f"test {config.key}", per_scale)
    scores = image_scores(maps)
    synchronize(torch_device)
    inference_ms = (time.perf_counter() - started) * 1000 / len(test_images)
    scores_cpu = scores.cpu()
    labels = np.asarray(test_set.labels)

    threshold = metrics.threshold_from_normals(val_scores, threshold_rule)
    f1_best, f1_threshold = metrics.f1_max(scores_cpu, labels)
    result: dict[str, Any] = {
        "backbone": config.backbone, "category": config.category, "seed": config.seed,
        "image_size": config.image_size, "epochs": trained_epochs, "teacher_weights": record.get("teacher_weights"),
        "selection": config.selection, "selected_epoch": selected_epoch,
        "n_test": len(labels), "n_good": int((labels == 0).sum()), "n_defect": int((labels == 1).sum()),
        "n_val": len(val_scores),
        "image_auroc": metrics.image_auroc(scores_cpu, labels),
        "f1_max": f1_best, "f1_max_threshold": f1_threshold,
        "f1_max_note": "test-tuned: the best F1 over all thresholds on the test set (optimistic)",
        "threshold_rule": threshold_rule,
        "threshold_note": "threshold from the held-out validation normals only; an image is flagged when score > threshold",
        **metrics.metrics_at_threshold(scores_cpu, labels, threshold),
        "per_defect_image_auroc": metrics.per_defect_auroc(scores_cpu, labels, test_set.defect_types),
        "masks_available": test_set.has_masks,
        "eval_precision": str(fast.autocast_dtype or torch.float32).removeprefix("torch."),
    } | ({} if config.method == DEFAULT_METHOD else {"method": config.method})  # an RD run's file as it always was
    aupimo = None
    if test_set.has_masks:
        pixel, aupimo = metrics.localisation_metrics(maps, masks.to(torch_device), labels, threshold)
        result.update(pixel_entries(pixel, aupimo))
    else:
        result.update({"pixel_auroc": None, "aupro": None, **dict.fromkeys(LOCALISATION_KEYS),
                       "pixel_metrics_note": "not available: the data set has no ground_truth/ masks"})
    result.update(layout_metrics.layout_results(maps, test_set))  # MVTec LOCO's sPRO, MVTec AD 2's unscored sets
    gflops, _ = forward_gflops(model, config.image_size)
    result["efficiency"] = {
        "trainable_params": count_parameters(model.trainable_modules()),
        "gflops": gflops,
        "inference_ms_per_image": inference_ms,
        "inference_batch_size": batch_size,
        "eval_peak_memory_mb": peak_memory_mb(torch_device),
        "device": torch_device.type,
        **_history_stats(run_directory),
    }

    runs.write_csv(run_directory / runs.SCORES_FILE, ["path", "defect_type", "label", "score"],
                   zip(test_set.paths, test_set.defect_types, labels.tolist(), scores_cpu.tolist()))
    runs.write_csv(run_directory / runs.VAL_SCORES_FILE, ["path", "score"], zip(val_set.paths, val_scores.tolist()))
    if aupimo is not None:
        anomalous = np.flatnonzero(labels == 1)
        runs.write_aupimo(run_directory, [test_set.paths[i] for i in anomalous],
                          [test_set.defect_types[i] for i in anomalous], aupimo.per_image[anomalous].tolist())
    if save_maps:
        runs.save_maps(run_directory / runs.MAPS_FILE, maps.cpu().to(torch.float16).numpy(), masks.cpu().numpy(),
                       test_set.paths)
    scale_maps = None if per_scale is None else [torch.cat(scale) for scale in zip(*per_scale, strict=True)]
    instruments.write_instruments(run_directory, maps, scale_maps, labels,
                                  masks.to(torch_device) if test_set.has_masks else None, test_set.paths, model.blur)
    runs.atomic_write_json(run_directory / runs.METRICS_FILE, result)
    return result


# ---------------------------------------------------------------------------------------------- CLI


def threshold_rule(text: str) -> str:
    """An argparse type: ``max`` or a quantile ``qF`` of the validation normals' scores."""
    try:
        metrics.threshold_from_normals([0.0], text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def rethreshold(run_directory: Path, rule: str) -> dict[str, Any]:
    """Re-derive the threshold metrics of an evaluated run under another rule from its saved scores
    (scores.csv, val_scores.csv): no forward pass. Updates and returns metrics.json; SegF1, which needs the maps,
    becomes null with a note saying how to recompute it."""
    result = runs.read_json(run_directory / runs.METRICS_FILE)
    scores = runs.load_scores(run_directory)
    val_file = run_directory / runs.VAL_SCORES_FILE
    if not val_file.is_file():
        raise CheckpointError(f"{val_file} is missing: rerun `main.py test --force` for this run")
    val_scores = pd.read_csv(val_file)["score"].to_numpy(copy=True)
    threshold = metrics.threshold_from_normals(val_scores, rule)
    result.update(metrics.metrics_at_threshold(scores["score"].to_numpy(copy=True),
                                               scores["label"].to_numpy(copy=True), threshold))
    result["threshold_rule"] = rule
    if result.get("seg_f1") is not None:  # pixels at the old threshold: not derivable from the image scores
        result["seg_f1"] = None
        result["seg_f1_note"] = (f"not re-derived for rule {rule}: SegF1 needs the maps; `main.py test --force "
                                 f"--threshold-rule {rule}` recomputes it")
    runs.atomic_write_json(run_directory / runs.METRICS_FILE, result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.set_defaults(backbones="all", categories="all", seeds="all", results="results", device="auto")
    parser.add_argument("--run-dir", action="append", help="evaluate this run directory (repeatable)")
    parser.add_argument("--save-maps", action=argparse.BooleanOptionalAction, default=True,
                        help="write maps.npz (float16 maps and masks: the report's galleries and PRO curves; about "
                             "2 bytes per test pixel, e.g. 14 MB for 110 images at 256 px)")
    parser.add_argument("--threshold-rule", type=threshold_rule, default="max",
                        help="'max' or a quantile like 'q0.99' of the validation normals' scores; a changed rule "
                             "re-derives the threshold metrics from the saved scores, without a forward pass")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--image-size", type=int, help="must equal the training size if given")
    parser.add_argument("--force", action="store_true", help="re-evaluate runs whose metrics are up to date")
    parser.add_argument("--scale-ablation", action=argparse.BooleanOptionalAction, default=True,
                        help="write scales.csv: the metrics of each scale's map alone and of the map without each "
                             "scale (6 more metric passes per run: see README)")
    parser.add_argument("--eval-amp", choices=[m.value for m in EvalAmp], default=EvalAmp.OFF.value,
                        help="precision of the network: off = float32 (TF32 convolutions allowed on CUDA), "
                             "bf16 = bf16 autocast (faster, moves the maps: see main.py bench)")


def _up_to_date(run_directory: Path, save_maps: bool, eval_amp: str = EvalAmp.OFF.value,
               scale_ablation: bool = False) -> bool:
    metrics_file = run_directory / runs.METRICS_FILE
    if not metrics_file.is_file() or (save_maps and not (run_directory / runs.MAPS_FILE).is_file()):
        return False
    masks_available = bool(runs.read_json(metrics_file).get("masks_available"))
    if instruments.missing_files(run_directory, scale_ablation, masks_available):
        return False
    if masks_available and not (run_directory / runs.AUPIMO_FILE).is_file():  # tested before AUPIMO existed
        return False
    precision = "float32" if eval_amp == EvalAmp.OFF.value else "bfloat16"
    if runs.read_json(metrics_file).get("eval_precision") != precision:  # older files: the training precision
        return False
    checkpoint = TrainConfig.from_record(runs.read_run_config(run_directory)).checkpoint_path
    return checkpoint.is_file() and metrics_file.stat().st_mtime >= checkpoint.stat().st_mtime


def metrics_table(results: list[dict[str, Any]]) -> str:
    """The runs' headline metrics as a console table (percent; n/a without masks)."""
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    rows = [{"run": f"{arm_label(r['backbone'], r.get('method', DEFAULT_METHOD))}/{r['category']}/seed{r['seed']}",
             "epochs": r.get("epochs"),
             "image AUROC": pct(r.get("image_auroc")), "pixel AUROC": pct(r.get("pixel_auroc")),
             "AUPRO": pct(r.get("aupro")), "AUPRO@5%": pct(r.get("aupro_5pct")), "AUPIMO": pct(r.get("aupimo")),
             "F1 @val-thr": pct(r.get("f1")), "SegF1 @val-thr": pct(r.get("seg_f1")),
             "threshold rule": r.get("threshold_rule")}
            for r in results]
    return pd.DataFrame(rows).to_string(index=False)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CheckpointError(f"--batch-size {args.batch_size}: expected at least 1")
    directories = [Path(d) for d in args.run_dir] if args.run_dir else \
        select_runs(args.results, args.backbones, args.categories, args.seeds, args.method)
    results = []
    for directory in directories:
        with runs.RunLock(directory):
            if not args.force and _up_to_date(directory, args.save_maps, args.eval_amp, args.scale_ablation):
                result = runs.read_json(directory / runs.METRICS_FILE)
                if result.get("threshold_rule") == args.threshold_rule:
                    print(f"{directory}: metrics up to date, skipped (--force to redo)")
                else:
                    result = rethreshold(directory, args.threshold_rule)
                    print(f"{directory}: threshold metrics re-derived for rule {args.threshold_rule} from the saved "
                          f"scores")
            else:
                result = evaluate_run(directory, args.device, args.save_maps, args.threshold_rule, args.batch_size,
                                      args.image_size, args.eval_amp, args.scale_ablation)
        results.append(result)
    print(metrics_table(results))
    results_roots = {Path(args.results)} if not args.run_dir else {d.parents[2] for d in directories}
    for root in sorted(results_roots):
        print(f"summary: {runs.write_summary(root)}\nnext: python RD4AD-main/main.py compare --results {root}")
    return 0
