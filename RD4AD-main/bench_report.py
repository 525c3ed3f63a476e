"""The report of ``main.py bench``: the project's speed targets checked against a run's figures, and the table it
prints. The figures themselves are measured by bench.py."""
from __future__ import annotations

from typing import Any

import sweep

__all__ = ["CPU_TRAIN_RATIO_TARGET", "CUDA_EVAL_TARGET_S", "CUDA_SWEEP_TARGET_S", "CUDA_TRAIN_TARGETS",
           "EQUAL_TOLERANCE", "EVAL_RATIO_TARGET", "category_evaluation", "check_targets", "format_report"]

EQUAL_TOLERANCE = 1e-6
# The project's speed targets (checked and recorded here, never asserted by a test).
CPU_TRAIN_RATIO_TARGET, EVAL_RATIO_TARGET = 1.3, 10.0
CUDA_TRAIN_TARGETS = {"resnet50": 1500.0, "wide_resnet50_2": 800.0}  # images/s at 256 px on one H200
CUDA_EVAL_TARGET_S, CUDA_SWEEP_TARGET_S = 2.0, 30 * 60.0


def category_evaluation(evaluation: dict[str, Any]) -> tuple[int, float]:
    """(images, seconds) of the fast evaluation of the whole category, whichever subset the naive path compared."""
    whole = evaluation.get("whole_category", evaluation)
    return int(whole["images"]), float(whole["fast"]["total_s"])


def check_targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets that this run's settings can check, each with its measured value."""
    checks = []
    cuda = payload["machine"]["device"] == "cuda"
    size = payload["settings"]["image_size"]
    for backbone, figures in payload["backbones"].items():
        train_figures, evaluation = figures.get("train"), figures.get("evaluation")
        if train_figures and "eager" not in train_figures and not cuda and size == 128:
            checks.append({"target": f"{backbone}: CPU training step fast/naive >= {CPU_TRAIN_RATIO_TARGET}x at 128 px",
                           "value": train_figures["ratio"], "met": train_figures["ratio"] >= CPU_TRAIN_RATIO_TARGET})
        if train_figures and cuda and size == 256 and backbone in CUDA_TRAIN_TARGETS:
            value = train_figures["fast"]["images_per_s"]
            checks.append({"target": f"{backbone}: CUDA training >= {CUDA_TRAIN_TARGETS[backbone]:.0f} images/s "
                                     f"at 256 px", "value": value, "met": value >= CUDA_TRAIN_TARGETS[backbone]})
        if evaluation:
            forward_share = evaluation["fast"]["forward_s"] / evaluation["fast"]["total_s"]
            for key, what in (("ratio_total", "whole evaluation"), ("ratio_without_forward",
                                                                    "evaluation without the network forward")):
                checks.append({"target": f"{backbone}: {what} fast/naive >= {EVAL_RATIO_TARGET:.0f}x "
                                         f"({evaluation['images']} images at {evaluation['image_size']} px)",
                               "value": evaluation[key], "met": evaluation[key] >= EVAL_RATIO_TARGET})
            checks[-2]["note"] = (f"the network forward, the same work in both paths, is {forward_share:.0%} of the "
                                  f"fast evaluation here")
            checks.append({"target": f"{backbone}: identical metrics (<= {EQUAL_TOLERANCE:g})",
                           "value": evaluation["identical_metrics"], "met": evaluation["identical_metrics"]})
            if evaluation.get("precision", "float32") != "float32" or evaluation.get("tf32"):
                checks[-1]["note"] = "the fast path's network did not run in exact float32 (bf16 or TF32): rerun " \
                                     "with --parts eval --no-tf32 for the equality check"
            if cuda and evaluation["image_size"] == 256:
                images, value = category_evaluation(evaluation)
                checks.append({"target": f"{backbone}: CUDA evaluation of a category < {CUDA_EVAL_TARGET_S:.0f} s "
                                         f"({images} images)", "value": value, "met": value < CUDA_EVAL_TARGET_S})
        if cuda and size == 256 and "sweep_estimate" in figures:
            value = figures["sweep_estimate"]["total_s"]
            checks.append({"target": f"{backbone}: 15-category 200-epoch sweep < 30 min (training, validation passes, "
                                     f"checkpoints and the test sets' evaluation)", "value": value,
                           "met": value < CUDA_SWEEP_TARGET_S})
    return checks


def _row(label: str, fast: float, naive: float, ratio: float, unit: str) -> str:
    return f"  {label:<44}{fast:>12.4g}{naive:>12.4g}{ratio:>9.2f}x  {unit}"


def format_report(payload: dict[str, Any]) -> str:
    """The readable table printed at the end."""
    machine, settings = payload["machine"], payload["settings"]
    where = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_cores']} cores)"
    load = payload["load_average"]
    lines = [f"RD4AD bench on {machine['device']}: {where}, torch {payload['versions']['torch']}, "
             f"{machine['torch_threads']} thread(s), {settings['image_size']} px, training batch "
             f"{settings['batch_size']}, best of {settings['rounds']} alternating rounds",
             f"load average (1 min) {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end",
             "random teachers (--no-pretrained implied): speed does not depend on the weights",
             f"  {'':<44}{'fast':>12}{'naive':>12}{'speed-up':>10}"]
    for backbone, figures in payload["backbones"].items():
        lines.append(f"{backbone}  (fast path: {figures['fast_path']})")
        if "train" in figures:
            t = figures["train"]
            other = "eager" if "eager" in t else "naive"
            label = "training images/s" if other == "naive" else "training images/s, compiled | eager"
            lines.append(_row(label, t["fast"]["images_per_s"], t[other]["images_per_s"], t["ratio"], "img/s"))
            lines.append(f"  {'  ops dispatched per fast step (casts)':<44}{t['fast']['ops_per_step']:>12.0f}"
                         f"  ({t['fast']['casts_per_step']:.0f} casts; torch.profiler)")
            if "compile_s" in t:
                lines.append(f"  {'  first compiled step (compilation), s':<44}{t['compile_s']:>12.4g}  "
                             f"({t['graphs_compiled']} graph(s); {t['graphs_compiled_after_first_step']} more in the "
                             f"timed and counted steps)")
            lines.append(_row("training peak memory MB", t["fast"]["peak_memory_mb"], t[other]["peak_memory_mb"],
                              t[other]["peak_memory_mb"] / max(t["fast"]["peak_memory_mb"], 1e-9), "MB"))
        if "inference" in figures:
            for key, entry in figures["inference"].items():
                if key == "batch_1":
                    lines.append(_row("inference ms/image, batch 1", entry["fast"]["ms_per_image"],
                                      entry["naive"]["ms_per_image"], entry["ratio"], "ms"))
                else:
                    lines.append(_row(f"inference images/s, {key.replace('_', ' ')}", entry["fast"]["images_per_s"],
                                      entry["naive"]["images_per_s"], entry["ratio"], "img/s"))
                    lines.append(_row(f"inference peak memory MB, {key.replace('_', ' ')}",
                                      entry["fast"]["peak_memory_mb"], entry["naive"]["peak_memory_mb"],
                                      entry["naive"]["peak_memory_mb"] / max(entry["fast"]["peak_memory_mb"], 1e-9),
                                      "MB"))
        if "evaluation" in figures:
            e = figures["evaluation"]
            f, n = e["fast"], e["naive"]
            what = f"{e['images']} images at {e['image_size']} px"
            lines.append(_row(f"evaluation of {what}, s", f["total_s"], n["total_s"], e["ratio_total"], "s"))
            lines.append(_row("  of which the network forward, s", f["forward_s"], n["forward_s"],
                              n["forward_s"] / f["forward_s"], "s"))
            lines.append(_row("  the rest (maps, blur, metrics), s", f["rest_s"], n["rest_s"],
                              e["ratio_without_forward"], "s"))
            lines.append(_row("evaluation peak memory MB", f["peak_memory_mb"], n["peak_memory_mb"],
                              n["peak_memory_mb"] / max(f["peak_memory_mb"], 1e-9), "MB"))
            m = e["metrics"]
            lines.append(f"  metrics (fast | naive | diff): image AUROC {m['image_auroc']['fast']:.6f} | "
                         f"{m['image_auroc']['naive']:.6f} | {m['image_auroc']['abs_diff']:.1e}; pixel AUROC "
                         f"{m['pixel_auroc']['fast']:.6f} | {m['pixel_auroc']['naive']:.6f} | "
                         f"{m['pixel_auroc']['abs_diff']:.1e}; AUPRO (exact) {m['aupro']['fast']:.6f} | "
                         f"{m['aupro']['naive']:.6f} | {m['aupro']['abs_diff']:.1e}")
            lines.append(f"  naive 200-threshold AUPRO {m['aupro_200_thresholds']['naive']:.6f} "
                         f"({m['aupro_200_thresholds']['minus_exact']:+.2e} from the exact one); max map difference "
                         f"{e['max_abs_map_diff']:.1e}; identical metrics: {e['identical_metrics']} "
                         f"(fast network in {e['precision']}{', TF32 allowed' if e['tf32'] else ''})")
            if "whole_category" in e:
                images, seconds = category_evaluation(e)
                lines.append(f"  the whole category ({images} images), fast: {seconds:.4g} s; the naive path compared "
                             f"{e['images']} of them (the rows above)")
            if "bf16_eval" in e:
                b = e["bf16_eval"]
                relative = "n/a" if b["max_map_diff_of_range"] is None else f"{b['max_map_diff_of_range']:.2%}"
                lines.append(f"  --eval-amp bf16: {b['times']['total_s']:.3g} s ({b['speedup']:.2f}x float32's speed); "
                             f"max map difference {b['max_abs_map_diff']:.1e} ({relative} of the map range); metric "
                             f"change {b['metric_change']}")
        if "sweep_estimate" in figures:
            s = figures["sweep_estimate"]
            parts = [("training", s["train_s"]), ("validation passes", s.get("validation_s")),
                     ("checkpoints", s.get("checkpoint_s")), ("test sets", s.get("eval_s"))]
            lines.append(f"  sweep estimate (15 MVTec AD categories, {s['epochs']} epochs, {s['image_size']} px): "
                         f"{sweep.format_duration(s['total_s'])} = "
                         + " + ".join(f"{what} {sweep.format_duration(v)}" for what, v in parts if v is not None))
    lines.append("targets:")
    for check in payload["targets"]:
        value = "" if isinstance(check["value"], bool) else f": {check['value']:.4g}"
        note = f" ({check['note']})" if "note" in check else ""
        lines.append(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}{value}{note}")
    return "\n".join(lines)
