"""What a sweep is: the (backbone, category, seed) runs a command line or config file selects, the
command-line flags that select them, and the one estimate of how long their training takes.

``train`` turns flags and ``--config`` files into one ``TrainConfig`` per run (``configs_from_args``);
``test`` picks trained run directories with the same flags (``select_runs``); ``launch.py`` and
``bench`` reuse both and the estimate.
"""
from __future__ import annotations

import argparse
import json
import pickle
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

import diskspace
import distributed
import runs
import storage
import toolchain
from backbone_facts import METHODS, split_arm
from backbones import build_model, check_method, check_teacher_weights, parse_backbones
from categories import OFFICIAL_COUNTS, validate_category
from dataset import DATA_FORMATS, list_categories, split_train_val
from errors import CheckpointError, DataError, RDError, WeightsError
from rdpp import METHOD as RDPP, NoisePairs
from recipe import (SELECT_SYNTHETIC_VAL, SELECTIONS, Amp, EvalAmp, FastPath, TrainConfig, check_config, make_optimizer,
                    open_split, rdpp_train_step, train_step)
from system_info import describe_hardware, synchronize

__all__ = ["CONFIG_ONLY_KEYS", "SWEEP_DEFAULTS", "SweepEstimate", "Throughput", "add_common_arguments",
           "add_data_format_arguments", "add_fast_path_arguments", "add_train_arguments", "check_compile_toolchains",
           "checkpoint_epoch",
           "configs_from_args", "estimate_sweep", "flag_of", "format_duration", "json_object", "measure_throughput",
           "official_train_images", "official_val_images", "parse_list", "preflight_runs", "preflight_teacher_weights",
           "read_config_file",
           "resolve_categories", "select_runs", "teacher_weights_per_backbone"]

SWEEP_DEFAULTS = {"backbones": "wide_resnet50_2", "categories": "all", "seeds": "0"}


# ---------------------------------------------------------------------------------------------- selection

def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object (argparse prints the error after the flag's name)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object such as '{{\"embed_dim\": 768}}'")
    return value


def parse_list(text: str, flag: str, kind: type = str) -> list:
    """A comma-separated flag value as a list of ``kind``; the error names the flag."""
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise RDError(f"{flag} {text!r}: expected a comma-separated list of {kind.__name__}") from None


def resolve_categories(data_root: str, text: str, data_format: str = "auto", split_csv: str | None = None) -> list[str]:
    """``all`` (every category of the data root or split file) or a comma list."""
    if text == "all":
        return list_categories(data_root, data_format, split_csv)
    names = parse_list(text, "--categories")
    for name in names:
        validate_category(name)
    try:
        available = list_categories(data_root, data_format, split_csv)
    except DataError:
        return names  # e.g. a stray folder beside them: opening the named categories says what is wrong
    missing = [name for name in names if name not in available]
    if missing:
        raise DataError(f"--categories {', '.join(missing)}: not found in {data_root}; its categories: "
                        f"{', '.join(available) or 'none'}")
    return names


def select_runs(results: str | Path, backbones: str, categories: str, seeds: str, method: str | None = None
                ) -> list[Path]:
    """Trained run directories (with config.json) matching the filters; 'all' matches anything. A backbone matches
    its runs under every method (its arm folders, backbone_facts.arm_label), an arm label its own; ``method``
    (None: all) keeps one method's runs."""
    def wanted(text: str, flag: str, kind: type = str) -> set | None:
        return None if text == "all" else set(parse_list(text, flag, kind))

    if method is not None:
        check_method(method)
    b, c, s = wanted(backbones, "--backbones"), wanted(categories, "--categories"), wanted(seeds, "--seeds", int)
    found = [d for d in runs.find_runs(results, require=runs.CONFIG_FILE)
             if (b is None or d.parts[-3] in b or split_arm(d.parts[-3])[0] in b) and (c is None or d.parts[-2] in c)
             and (method is None or split_arm(d.parts[-3])[1] == method)
             and (s is None or int(d.name.removeprefix("seed")) in s)]
    if not found:
        chosen = "" if method is None else f" --method {method}"
        raise CheckpointError(f"no trained run under {results} matches --backbones {backbones} --categories "
                              f"{categories} --seeds {seeds}{chosen}: run `main.py train` first")
    return found


# ---------------------------------------------------------------------------------------------- flags

def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train and test: which runs, and where their files live."""
    parser.add_argument("--backbones", help="comma list of backbones, or 'all' (train default: wide_resnet50_2)")
    parser.add_argument("--categories", help="comma list of categories, or 'all' (default)")
    parser.add_argument("--seeds", help="comma list of seeds (train default: 0)")
    parser.add_argument("--results", help="folder of run directories (default results/)")
    parser.add_argument("--checkpoints", help="folder of checkpoints (default checkpoints/)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--method", choices=tuple(METHODS),
                        help="rd (RD4AD) or rdpp (RD++, docs/reproduction.md section 11): train trains it (default rd, "
                             "folders <backbone>+rdpp for RD++); test and the other commands keep that method's runs "
                             "(default: all)")


def add_data_format_arguments(parser: argparse.ArgumentParser) -> None:
    """How the data root is laid out (dataset.py): detected by default."""
    parser.add_argument("--format", dest="data_format", choices=DATA_FORMATS,
                        help="data layout: auto (default: detected), mvtec, visa, mvtec_ad2, mvtec_loco, or csv with "
                             "--split-csv")
    parser.add_argument("--split-csv", dest="split_csv",
                        help="split file (category,split,label,image,mask) of --format csv; paths relative to "
                             "--data-root")


def add_fast_path_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed settings (``FastPath``); None means the default for the device."""
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                        help="channels_last memory format (default: on)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--amp", choices=[m.value for m in Amp], help="bf16 autocast (default auto: CUDA only)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the training step")


def add_train_arguments(parser: argparse.ArgumentParser, grid_lrs: str | None = None) -> None:
    """``main.py train``'s flags. Each defaults to None: the value then comes from --config, else from
    TrainConfig's default. With ``grid_lrs`` (``main.py tune``) --epochs, --lr and --beta1 take comma lists
    (text), and --lr defaults to ``grid_lrs``."""
    d = TrainConfig(data_root="", category="")
    parser.add_argument("--data-root", help="data root (required, here or in --config): MVTec AD or VisA layout, "
                                            "or the root the --split-csv paths are relative to")
    add_data_format_arguments(parser)
    add_common_arguments(parser)
    parser.add_argument("--config", help="JSON file of TrainConfig fields (and backbones/categories/seeds); "
                                         "flags given on the command line win")
    parser.add_argument("--image-size", type=int, help=f"input size in px (default {d.image_size})")
    grid = grid_lrs is not None
    listed = ", or a comma list: the grid" if grid else ""
    parser.add_argument("--epochs", type=str if grid else int, help=f"default {d.epochs}{listed}")
    parser.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    parser.add_argument("--lr", type=str if grid else float, default=grid_lrs,
                        help=f"Adam learning rate (default {grid_lrs or d.lr}{listed})")
    parser.add_argument("--beta1", type=str if grid else float, help=f"default {d.beta1}{listed}")
    parser.add_argument("--beta2", type=float, help=f"default {d.beta2}")
    parser.add_argument("--val-fraction", type=float, help=f"share of train/good held out (default {d.val_fraction})")
    parser.add_argument("--split-seed", type=int, help="seed of the validation split, shared by all backbones "
                                                       f"and seeds (default {d.split_seed})")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                        help="train on a RANDOM teacher on purpose (tests, smoke runs)")
    parser.add_argument("--teacher-weights", dest="teacher_weights_path",
                        help="local teacher weights (a torchvision state_dict .pth): NAME=PATH[,NAME=PATH] per "
                             "backbone, or a bare PATH for a one-backbone sweep")
    parser.add_argument("--fallback-random-teacher", action="store_true", default=None,
                        help="demo only: if pretrained weights cannot be loaded, warn loudly and go on")
    parser.add_argument("--checkpoint-every", type=int,
                        help=f"epochs between checkpoints (default {d.checkpoint_every}): a killed run resumes "
                             f"from the last one; each holds Adam's moments too, 3x the weights (WRN-50-2: 1.0 GB), "
                             f"and the estimate counts their writes")
    parser.add_argument("--keep-optimizer", action="store_true", default=None,
                        help="keep the optimiser state in the final checkpoint (3x larger) so that the run can be "
                             "extended with more --epochs later; unfinished checkpoints always keep it")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic kernels (slower on CUDA)")
    add_fast_path_arguments(parser)
    parser.add_argument("--eval-amp", choices=[m.value for m in EvalAmp],
                        help="precision of the scoring done while training (synthetic validation): off = float32 "
                             "(default), bf16 on request")
    parser.add_argument("--sync-bn", action="store_true", default=None,
                        help="torchrun only: BatchNorm statistics over the whole global batch (the default for "
                             "BatchNorm students; see distributed.py)")
    parser.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                        help="torchrun only: per-process BatchNorm statistics (not the 1-GPU recipe)")
    parser.add_argument("--selection", choices=SELECTIONS,
                        help="which epoch is the run's model: last (default, the paper's protocol) or synthetic-val "
                             "(the best synthetic-anomaly validation AUPRO; synthval.py; no test image used)")
    parser.add_argument("--val-every", type=int,
                        help=f"epochs between synthetic-validation passes into history.csv; the last epoch always has "
                             f"one (default {d.val_every})")
    parser.add_argument("--audit-test", action="store_true", default=None,
                        help="audit the selector: score the TEST set at every synthetic-validation epoch into "
                             "selection_audit.csv (read by the report's audit only; never by selection or tune)")
    parser.add_argument("--model-knobs", type=json_object,
                        help='JSON object of builder knobs, e.g. \'{"embed_dim": 768}\' for ConvNeXt (main.py summary '
                             'and the guide list each backbone\'s)')
    parser.add_argument("--restart", action="store_true", help="discard existing checkpoints and start over")
    parser.add_argument("--resume", action="store_true",
                        help="require an existing checkpoint to continue (runs resume by default anyway)")
    parser.add_argument("--no-eta", action="store_true", help="do not estimate the sweep's time before it starts")
    parser.add_argument("--skip-space-check", action="store_true",
                        help="start even when the checkpoint or results folder lacks the free space for the largest "
                             "checkpoint the sweep will write (checked before training; a warning instead)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the sweep's estimated training time (and the teacher weights' status) and stop")
    parser.add_argument("--bench-json", default="bench.json",
                        help="a `main.py bench` output to take the throughput from for the estimate, when no "
                             "history of the same setting exists (default bench.json, if present)")


# ---------------------------------------------------------------------------------------------- config files

FLAG_OF_FIELD = {"data_format": "--format", "teacher_weights_path": "--teacher-weights", "seed": "--seeds"}


def flag_of(name: str) -> str:
    """The command-line flag that sets TrainConfig field ``name``."""
    return FLAG_OF_FIELD.get(name, "--" + name.replace("_", "-"))


CONFIG_ONLY_KEYS = {"description", "pairs", "primary", "claim_basis", "sweeps"}  # read by compare or for readers


def read_config_file(path: str) -> list[dict[str, Any]]:
    """A ``--config`` JSON object of TrainConfig fields and sweep lists (lists become comma lists), as one
    dict per sweep: a file with ``"sweeps": [{...}, ...]`` (e.g. one per dataset) gives each entry over the
    file's other keys. Keys are checked here; values by ``recipe.check_config`` once the runs are built."""
    file = Path(path)
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RDError(f"--config {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RDError(f"--config {file}: cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise RDError(f"--config {file}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise RDError(f"--config {file}: expected a JSON object of settings, got a {type(values).__name__}")
    sweeps = values.pop("sweeps", [{}])
    if not isinstance(sweeps, list) or not sweeps or not all(isinstance(entry, dict) for entry in sweeps):
        raise RDError(f"--config {file}: \"sweeps\" must be a non-empty list of JSON objects")
    known = {f.name for f in fields(TrainConfig)} | set(SWEEP_DEFAULTS) | CONFIG_ONLY_KEYS
    merged = []
    for entry in sweeps:
        settings = values | entry
        unknown = sorted(set(settings) - known)
        if unknown:
            raise RDError(f"--config {file}: unknown keys {unknown}; known: {sorted(known)}")
        for key in SWEEP_DEFAULTS:
            if key in settings and not isinstance(settings[key], (str, int, list)):
                raise RDError(f"--config {file}: {key!r} must be a comma list or a JSON list, got {settings[key]!r}")
        merged.append({k: ",".join(map(str, v)) if isinstance(v, list) and k in SWEEP_DEFAULTS else v
                       for k, v in settings.items() if k not in CONFIG_ONLY_KEYS})
    return merged


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per (backbone, category, seed): defaults <- --config file <- command-line flags,
    every value checked before anything runs (the error names the flag or the file's field)."""
    sweeps = read_config_file(args.config) if args.config else [{}]
    flags = {k: v for k, v in vars(args).items() if v is not None}
    configs = []
    for from_file in sweeps:
        values: dict[str, Any] = dict(SWEEP_DEFAULTS) | from_file | flags

        def origin(name: str) -> str:
            if name in flags or name not in from_file:
                return flag_of(name)
            return f"field {name!r} of --config {args.config}"

        if not values.get("data_root"):
            raise RDError("--data-root is required (the data root), on the command line or in --config")
        categories = resolve_categories(values["data_root"], str(values["categories"]),
                                        values.get("data_format", "auto"), values.get("split_csv"))
        per_run = {f.name: values[f.name] for f in fields(TrainConfig)
                   if f.name in values and f.name not in ("category", "backbone", "seed", "teacher_weights_path")}
        chosen = parse_backbones(str(values["backbones"]))
        weights = teacher_weights_per_backbone(values.get("teacher_weights_path"), chosen)
        for backbone in chosen:
            for category in categories:
                for seed in parse_list(str(values["seeds"]), "--seeds", int):
                    config = TrainConfig(category=category, backbone=backbone, seed=seed,
                                         teacher_weights_path=weights.get(backbone), **per_run)
                    check_config(config, origin)
                    configs.append(config)
    return configs


def teacher_weights_per_backbone(text: str | None, backbones: list[str]) -> dict[str, str]:
    """``--teacher-weights``: ``NAME=PATH[,NAME=PATH]``, or a bare PATH when the sweep has one backbone."""
    if not text:
        return {}
    if "=" not in text:
        if len(backbones) > 1:
            raise RDError(f"--teacher-weights {text}: the sweep has {len(backbones)} backbones "
                          f"({', '.join(backbones)}); say which file is whose, as NAME=PATH[,NAME=PATH]")
        return {backbones[0]: text}
    mapping = {}
    for item in parse_list(text, "--teacher-weights"):
        name, _, path = item.partition("=")
        if name.strip() not in backbones or not path.strip():
            raise RDError(f"--teacher-weights {item!r}: expected NAME=PATH with NAME one of this sweep's backbones "
                          f"({', '.join(backbones)})")
        mapping[name.strip()] = path.strip()
    return mapping


def check_compile_toolchains(configs: list[TrainConfig]) -> None:
    """Before any data is read: every device that a ``--compile`` run trains on has inductor's toolchain."""
    for name in sorted({config.device for config in configs if config.compile}):
        toolchain.check_compile_toolchain(distributed.device_for(name).type)


def preflight_runs(configs: list[TrainConfig]) -> None:
    """The checks of each run that can fail before it trains (device, data root, category, split), done before any
    run's folder or lock file is made: a bad --device or --data-root leaves nothing behind."""
    for name in sorted({config.device for config in configs}):
        distributed.device_for(name)
    opened: set[tuple] = set()
    for config in configs:
        key = (config.data_root, config.category, config.data_format, config.split_csv, config.val_fraction,
               config.split_seed)
        if key not in opened:
            opened.add(key)
            open_split(config, "train")  # lists the files and splits off validation (no image is decoded)


def preflight_teacher_weights(configs: list[TrainConfig]) -> list[str]:
    """Find every backbone's teacher weights before anything trains; one error lists all that are missing
    (with where to put them), so a sweep never stops hours in on its second backbone."""
    lines, failed = [], False
    seen: set[tuple] = set()
    for config in configs:
        key = (config.backbone, config.pretrained, config.teacher_weights_path)
        if key in seen or config.fallback_random_teacher:
            continue
        seen.add(key)
        try:
            status = check_teacher_weights(config.backbone, pretrained=config.pretrained,
                                           weights_path=config.teacher_weights_path)
            lines.append(f"  {config.backbone}: ok, {status}")
        except WeightsError as error:
            failed = True
            lines.append(f"  {config.backbone}: MISSING or unusable: {error}")
    if failed:
        raise WeightsError("teacher weights are not ready, nothing was trained:\n" + "\n".join(lines))
    return lines


# ---------------------------------------------------------------------------------------------- time estimate

def format_duration(seconds: float) -> str:
    """``1d 3h 05m``, ``2h 07m`` or ``4m 09s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def checkpoint_epoch(path: Path) -> int:
    """Epochs trained in a checkpoint (0 when there is none), memory-mapped: the weights are not read."""
    if not path.is_file():
        return 0
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return 0
    return int(payload.get("training_state", {}).get("epoch", 0))


def official_train_images(config: TrainConfig) -> int:
    """Images a run trains on per epoch according to the official MVTec AD counts (no data needed)."""
    if config.category not in OFFICIAL_COUNTS:
        raise RDError(f"{config.category!r} is not an MVTec AD category: its size is not known without the data")
    n_train_good = OFFICIAL_COUNTS[config.category][0]
    names = [f"{i:03d}.png" for i in range(n_train_good)]  # MVTec AD names its training images 000.png, 001.png, ...
    return len(split_train_val(names, config.val_fraction, config.split_seed)[0])


def _train_images_on_disk(config: TrainConfig) -> int:
    return len(open_split(config, "train"))


def _val_images_on_disk(config: TrainConfig) -> int:
    return len(open_split(config, "val"))


def official_val_images(config: TrainConfig) -> int:
    """Validation normals a run holds out according to the official MVTec AD counts (no data needed)."""
    return OFFICIAL_COUNTS[config.category][0] - official_train_images(config)


@dataclass
class Throughput:
    images_per_s: float
    basis: str
    world_size: int = 1  # processes that shared the work when it was measured
    scoring_images_per_s: float | None = None  # forward-only scoring (validation), when measured with it


def _same_setting(recorded: dict[str, Any], config: TrainConfig, hardware: dict[str, Any]) -> bool:
    """Same backbone size, batch and fast path on the same kind of hardware: the throughput carries over."""
    keys = ("device", "gpu") if hardware["device"] == "cuda" else ("device", "cpu", "torch_threads")
    same_hardware = all(recorded.get("hardware", {}).get(k) == hardware.get(k) for k in keys)
    same_method = recorded.get("method", TrainConfig.method) == config.method
    return same_hardware and same_method and all(recorded.get(k) == getattr(config, k)
                                                 for k in ("backbone", "image_size", "batch_size", "model_knobs"))


def _throughput_from_history(config: TrainConfig, hardware: dict[str, Any], fast: dict[str, Any],
                             world_size: int) -> Throughput | None:
    """Mean images/s of the epochs after the first in an earlier run of the same setting and world size (and its
    scoring speed when that run was tested in float32)."""
    for config_file in sorted(Path(config.results).glob(f"{config.key.arm}/*/seed*/{runs.CONFIG_FILE}")):
        recorded = runs.read_json(config_file)
        if not _same_setting(recorded, config, hardware) or recorded.get("fast_path") != fast \
                or recorded.get("world_size", 1) != world_size:
            continue
        speed = runs.steady_images_per_s(runs.read_history(config_file.parent))
        if speed is not None:
            scoring = None
            metrics_file = config_file.parent / runs.METRICS_FILE
            if metrics_file.is_file():
                tested = runs.read_json(metrics_file)
                ms = (tested.get("efficiency") or {}).get("inference_ms_per_image")
                scoring = 1000.0 / ms if ms and tested.get("eval_precision") == "float32" else None
            return Throughput(speed, f"history of {config_file.parent}", world_size, scoring)
    return None


def _throughput_from_bench(config: TrainConfig, hardware: dict[str, Any], fast: dict[str, Any],
                           bench_file: str | None) -> Throughput | None:
    """The fast training images/s (and scoring images/s at batch 32) of a `main.py bench` output taken with the
    same setting."""
    if not bench_file or not Path(bench_file).is_file() or config.method == RDPP:  # bench times RD4AD's step
        return None
    try:
        bench = runs.read_json(bench_file)
        figures = bench["backbones"][config.backbone]
        recorded = {"hardware": bench["machine"], "backbone": config.backbone, "model_knobs": {},
                    "image_size": bench["settings"]["image_size"], "batch_size": bench["settings"]["batch_size"]}
        if not _same_setting(recorded, config, hardware) or figures["fast_path"] != fast:
            return None
        scoring = ((figures.get("inference") or {}).get("batch_32") or {}).get("fast", {}).get("images_per_s")
        return Throughput(float(figures["train"]["fast"]["images_per_s"]), f"{bench_file} (main.py bench)",
                          scoring_images_per_s=scoring)
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError):
        return None


def measure_throughput(config: TrainConfig, device: torch.device, steps: int = 2, train: bool = True) -> Throughput:
    """Time a few training steps of the run's model on random images (a random teacher: the speed does not
    depend on the weights), after one warm-up step, and a few scoring batches (float32 forward, as validation
    scores); the best of each counts. ``train`` False times the scoring alone."""
    fast = FastPath.resolve(config, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = fast.place(build_model(config.backbone, pretrained=False, method=config.method, **config.model_knobs),
                           device)
        images = torch.randint(0, 256, (config.batch_size, 3, config.image_size, config.image_size),
                               dtype=torch.uint8, device=device)
        scoring = fast.scoring()

        def score_once() -> None:
            model.eval()
            with torch.no_grad(), scoring.autocast(device):
                model.anomaly_map(scoring.prepare(images))

        timed = [("score", score_once)]
        if train:
            timed.insert(0, ("train", _training_step_of(model, config, images, fast, device)))
        best = {}
        for name, once in timed:
            times = []
            for _ in tqdm(range(1 + steps), desc=f"timing {name} steps for the estimate", unit="step", leave=False):
                synchronize(device)
                started = time.perf_counter()
                once()
                synchronize(device)
                times.append(time.perf_counter() - started)
            best[name] = config.batch_size / min(times[1:])
    del model, timed
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Throughput(best.get("train", 0.0), f"{steps} timed training steps after a warm-up",
                      scoring_images_per_s=best["score"])


def _training_step_of(model: torch.nn.Module, config: TrainConfig, images: torch.Tensor, fast: FastPath,
                      device: torch.device) -> Callable[[], None]:
    """One training step on ``images`` as ``measure_throughput`` times it, with its optimiser (and RD++'s noise
    pairs, drawn once as training draws them once per epoch) made here, outside the timing."""
    optimizer = make_optimizer(model, config)
    noise = NoisePairs(0, config.image_size, device) if config.method == RDPP else None
    pair = None if noise is None else noise.epoch(1, [len(images)])[0]

    def train_once() -> None:
        model.train()
        batch = fast.prepare(images)
        if noise is None:
            train_step(model, optimizer, batch, fast, device)
        else:  # RD++: noisy copy and two teacher passes per step; each timed step also steps the optimiser
            patches, shuffle = pair
            rdpp_train_step(model, optimizer, batch, noise.noisy(batch, patches), shuffle, fast, device)

    return train_once


@dataclass
class SweepEstimate:
    """Estimated time of the runs still to train: training steps, validation passes and checkpoint writes;
    ``str()`` gives the printed summary."""

    total_s: float
    runs_to_train: int
    runs_complete: int
    images: int  # training images x epochs still to go, over all runs
    lines: list[str]
    train_s: float = 0.0
    validation_s: float = 0.0
    checkpoint_s: float = 0.0
    checkpoint_bytes: int = 0  # written over the sweep (each save, not what is kept)

    def __str__(self) -> str:
        if not self.runs_to_train:
            return "sweep estimate: every run is complete; nothing to train"
        return "\n".join([f"sweep estimate: {format_duration(self.total_s)} for {self.runs_to_train} run(s) to train "
                          f"({self.runs_complete} complete): training steps {format_duration(self.train_s)}, "
                          f"validation passes {format_duration(self.validation_s)}, checkpoints "
                          f"{format_duration(self.checkpoint_s)} ({self.checkpoint_bytes / 1e9:.1f} GB written); "
                          f"`main.py test` comes on top", *self.lines])


@dataclass
class _RunWork:
    """What one run still does: training images x epochs, validation images scored, checkpoint bytes written."""

    train_images: int
    validation_images: int
    checkpoint_bytes: int


def _run_work(config: TrainConfig, done: int, n_train: int, n_val: int) -> _RunWork:
    """Epochs after ``done``: the training images, each epoch's validation-loss pass over the held-out normals and
    the synthetic-validation passes (every --val-every epochs and the last: the normals and two anomalous copies
    of each, synthval.py), and the checkpoints (every --checkpoint-every epochs with Adam's moments, the last
    without; best.pth under --selection synthetic-val at most once per synthetic-validation pass)."""
    epochs = range(done + 1, config.epochs + 1)
    passes = sum(1 for epoch in epochs if epoch % config.val_every == 0 or epoch == config.epochs)
    sizes = storage.checkpoint_sizes(config)
    best = passes * sizes.finished if config.selection == SELECT_SYNTHETIC_VAL else 0
    written = storage.checkpoint_saves(config, done) * sizes.unfinished + sizes.finished + best
    return _RunWork(len(epochs) * n_train, len(epochs) * n_val + passes * 3 * n_val, written)


def estimate_sweep(configs: list[TrainConfig], bench_file: str | None = "bench.json", *,
                   throughput: Throughput | None = None,
                   epochs_done: Callable[[TrainConfig], int] = lambda c: checkpoint_epoch(c.checkpoint_path),
                   train_images: Callable[[TrainConfig], int] = _train_images_on_disk,
                   val_images: Callable[[TrainConfig], int] = _val_images_on_disk,
                   write_bytes_per_s: float | None = None) -> SweepEstimate:
    """The estimated time of the runs still to train: training images x epochs / throughput, the validation
    images scored / scoring speed, and the checkpoint bytes / the write speed measured in the checkpoint folder.

    By default the runs' progress comes from their checkpoints, their size from the data on disk, and the
    throughput of each (backbone, size, batch, knobs) from, in this order: an earlier run's history.csv
    with the same setting and hardware, a bench.json of the same, or a few timed steps (scoring, where the
    source has no scoring speed, is timed too). ``bench`` projects a study it has no data for by passing
    ``throughput`` (measured), ``epochs_done`` (none), ``train_images`` and ``val_images`` (the official counts)
    and ``write_bytes_per_s`` (measured beside its output).
    """
    world = distributed.current()
    device = distributed.device_for(configs[0].device)
    hardware = describe_hardware(device)
    sizes: dict[tuple, tuple[int, int]] = {}
    groups: dict[tuple, list[_RunWork]] = {}  # (backbone, size, batch, knobs) -> the work left per run
    representative: dict[tuple, TrainConfig] = {}
    write_speeds: dict[int, tuple[Path, float]] = {}  # file system -> (the first checkpoint folder on it, its speed)
    checkpoint_s = 0.0
    for config in configs:
        done = epochs_done(config)
        if done >= config.epochs:
            continue
        data_key = (config.data_root, config.category, config.val_fraction, config.split_seed)
        if data_key not in sizes:
            sizes[data_key] = (train_images(config), val_images(config))
        work = _run_work(config, done, *sizes[data_key])
        folder = diskspace.existing_folder(config.checkpoint_path.parent)
        disk = diskspace.file_system(folder)
        if write_bytes_per_s is None and disk not in write_speeds:
            write_speeds[disk] = (folder, storage.measure_write_speed(folder))
        checkpoint_s += work.checkpoint_bytes / (write_bytes_per_s or write_speeds[disk][1])
        key = (config.backbone, config.method, config.image_size, config.batch_size,
               json.dumps(config.model_knobs, sort_keys=True))
        groups.setdefault(key, []).append(work)
        representative.setdefault(key, config)
    lines, train_s, validation_s = [], 0.0, 0.0
    for key, works in groups.items():
        config = representative[key]
        fast = FastPath.resolve(config, device).as_dict()
        speed = (throughput
                 or _throughput_from_history(config, hardware, fast, world.size)
                 or _throughput_from_bench(config, hardware, fast, bench_file)
                 or measure_throughput(config, device))
        scoring = speed.scoring_images_per_s or measure_throughput(config, device, train=False).scoring_images_per_s
        scale = world.size / speed.world_size
        images = sum(w.train_images for w in works)
        seconds = images / (speed.images_per_s * scale)
        validated = sum(w.validation_images for w in works)
        scored = validated / scoring  # rank 0 validates alone
        train_s, validation_s = train_s + seconds, validation_s + scored
        scaling = f" x {world.size} processes (assumed linear)" if scale != 1 else ""
        lines.append(f"  {config.key.arm} at {config.image_size} px, batch {config.batch_size}: {len(works)} run(s), "
                     f"{images:,} images x epochs at {speed.images_per_s:.1f} img/s{scaling} -> "
                     f"{format_duration(seconds)} (throughput from {speed.basis}); {validated:,} validation images "
                     f"at {scoring:.1f} img/s -> {format_duration(scored)}")
    if write_speeds or write_bytes_per_s:
        speeds = ", ".join(f"{speed / 1e6:.0f} MB/s in {folder}" for folder, speed in write_speeds.values()) or \
            f"{write_bytes_per_s / 1e6:.0f} MB/s given"
        written = sum(w.checkpoint_bytes for works in groups.values() for w in works)
        lines.append(f"  checkpoints: {written / 1e9:.2f} GB written at {speeds} (synced) -> "
                     f"{format_duration(checkpoint_s)}; one every --checkpoint-every epochs with Adam's moments")
    to_train = sum(len(works) for works in groups.values())
    every = [w for works in groups.values() for w in works]
    return SweepEstimate(train_s + validation_s + checkpoint_s, to_train, len(configs) - to_train,
                         sum(w.train_images for w in every), lines, train_s, validation_s, checkpoint_s,
                         sum(w.checkpoint_bytes for w in every))
