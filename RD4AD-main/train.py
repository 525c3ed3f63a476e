"""Training (``main.py train``): the run loop of the shared recipe, resumable runs and sweeps.

``main.py train --data-root ROOT --categories all --backbones resnet50,convnext_tiny --seeds 0,1,2``
trains one model per (backbone, category, seed) with the same data, split and recipe (recipe.py,
docs/reproduction.md#2-training-recipe). The training images live on the device as uint8 and are
normalised there (no DataLoader workers), the batch order of each epoch is a function of (seed, epoch)
alone, and checkpoints hold the optimiser state, so a killed run resumed from its last checkpoint ends
exactly where an uninterrupted one does. ``--method rdpp`` trains RD++ (rdpp.py): each batch gets its noisy copy
and SSOT shuffle (drawn per epoch from the run's noise generator) and the optimiser steps every second batch; an
unfinished checkpoint keeps the gradients of a batch not yet stepped, so a resume is exact there too.
"""
from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tqdm import tqdm

import distributed
import rdpp
import recipe
import runs
import selection_audit
import storage
import sweep
import synthval
from backbones import get_backbone, teacher_imagenet_top1
from checkpoint import load_into, read_checkpoint, save_checkpoint, teacher_digest
from errors import CheckpointError, RDError
from rd_model import ReverseDistillation, distillation_loss, validate_image_size
from dataset import data_provenance
from recipe import (FastPath, NonFiniteLoss, TrainConfig, build_run_model, check_resumable, epoch_batches,
                    make_optimizer, open_split, seed_everything)
from system_info import describe_hardware, library_versions, peak_memory_mb, reset_peak_memory

__all__ = ["add_arguments", "gradient_norms", "run", "run_locks", "train_run", "training_summary", "validation_loss"]


@torch.no_grad()
def gradient_norms(model: ReverseDistillation) -> torch.Tensor:
    """The L2 norm of all the gradients of the bottleneck's and of the student's parameters, (2,) on their device
    (no synchronisation); only reads ``.grad``, so training is unchanged. A part without gradients gives 0."""
    norms = []
    for part in (model.bottleneck, model.student):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        norms.append(torch.nn.utils.get_total_norm(grads, 2.0).float() if grads
                     else torch.zeros((), device=next(part.parameters()).device))
    return torch.stack(norms)


@torch.no_grad()
def validation_loss(model: ReverseDistillation, images: torch.Tensor, fast: FastPath, device: torch.device,
                    batch_size: int) -> float:
    """Mean distillation loss on the held-out normal images, in eval mode (the over-fitting watch)."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = fast.prepare(images[start:start + batch_size].to(device))  # from pageable memory: a plain copy
        with fast.autocast(device):
            teacher, student = model(batch)
        loss, _ = distillation_loss(teacher, student)  # float32, autocast off inside
        total += loss.item() * len(batch)
    return total / max(len(images), 1)


def train_run(config: TrainConfig, restart: bool = False, quiet: bool = False, announce_fallback: bool = True) -> Path:
    """Train one (backbone, category, seed) to ``config.epochs``, resuming from its last checkpoint.

    Returns the run directory. Skips a run whose checkpoint already reached ``config.epochs``.
    In a torchrun group (``distributed.process_group``) every rank trains its share of each global
    batch and only rank 0 writes files and shows progress.
    """
    validate_image_size(config.image_size)
    get_backbone(config.backbone)
    synthval.check_settings(config)
    sweep.preflight_runs([config])  # device and data: checked before the run's folders and locks are made
    world = distributed.current()
    if world.enabled and config.method == rdpp.METHOD:
        raise RDError("--method rdpp runs on one process: its step (noisy pairs, two forward passes of the teacher, "
                      "gradients accumulated over two batches) is not wrapped for torchrun's DistributedDataParallel; "
                      "train RD++ runs with `main.py train` or launch.py (one run per device)")
    quiet = quiet or not world.is_main
    if world.enabled and config.batch_size % world.size:
        raise RDError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                      f"{world.size} processes")
    with run_locks(config) if world.is_main else nullcontext():
        return _train_locked(config, world, restart, quiet, announce_fallback)


@contextmanager
def run_locks(config: TrainConfig) -> Iterator[None]:
    """Hold the locks of the run's results and checkpoint folders, and clear what killed writes left there."""
    with runs.RunLock(config.run_dir), runs.RunLock(config.checkpoint_path.parent):
        for folder in (config.run_dir, config.checkpoint_path.parent):
            runs.remove_stale_temporaries(folder)
        yield


def _warn_if_threads_differ(config: TrainConfig) -> None:
    """Different CPU thread counts give different float rounding: a resumed run is then not bit-identical."""
    path = config.run_dir / runs.CONFIG_FILE
    if not path.is_file():
        return
    saved = (runs.read_json(path).get("hardware") or {}).get("torch_threads")
    if saved is not None and saved != torch.get_num_threads():
        print(f"warning: {config.key} was trained with {saved} torch thread(s) and resumes with "
              f"{torch.get_num_threads()}: the result will not be bit-identical to an uninterrupted run "
              f"(set OMP_NUM_THREADS={saved} to keep it)", flush=True)


def _train_locked(config: TrainConfig, world: distributed.World, restart: bool, quiet: bool,
                  announce_fallback: bool) -> Path:
    """``train_run`` once the run's folders are locked."""
    if restart and world.is_main:
        config.checkpoint_path.unlink(missing_ok=True)
        config.best_checkpoint_path.unlink(missing_ok=True)
        (config.run_dir / runs.CONFIG_FILE).unlink(missing_ok=True)
        selection_audit.discard(config)  # an audit of the discarded training
    distributed.barrier()
    check_resumable(config)
    if world.is_main:
        _warn_if_threads_differ(config)

    # the data first: a wrong path fails before a large model is built
    train_set, val_set = open_split(config, "train"), open_split(config, "val")
    device = distributed.device_for(config.device)
    seed_everything(config.seed, config.deterministic)
    fast = FastPath.resolve(config, device)
    model, weights_id, teacher_warning = build_run_model(config, announce_fallback)
    fast.place(model, device)
    sync_bn = distributed.resolve_sync_bn(config.sync_bn, model, world)
    net = distributed.DistributedRD(model, device, sync_bn) if world.enabled else model
    optimizer = make_optimizer(model, config)

    teacher_sha256 = teacher_digest(model)  # the teacher is frozen: hashed once, checked when resuming or testing
    start_epoch, history, pending = 0, [], False
    if config.checkpoint_path.is_file():
        payload = read_checkpoint(config.checkpoint_path, config.backbone, config.image_size, config.method)
        load_into(model, payload, config.checkpoint_path)
        state = payload["training_state"]
        start_epoch, history = int(state["epoch"]), list(state["history"])
        if world.is_main:
            _complete_best_checkpoint(config, model, weights_id, history, start_epoch, teacher_sha256)
        if start_epoch >= config.epochs:
            if not quiet:
                print(f"{config.key}: complete ({start_epoch} epochs), skipped")
            return config.run_dir
        if "optimizer" not in state:
            raise CheckpointError(
                f"{config.checkpoint_path} is a finished {start_epoch}-epoch run saved without its optimiser state "
                f"(final checkpoints drop it: 3x smaller); --epochs {config.epochs} cannot continue it exactly. "
                f"Pass --restart to train it from scratch, and --keep-optimizer to keep runs extendable")
        optimizer.load_state_dict(state["optimizer"])
        pending = _restore_pending_gradients(optimizer, state.get("pending_gradients"), device)
        if world.is_main:
            print(f"{config.key}: resuming after epoch {start_epoch} of {config.epochs}")

    train_images = train_set.uint8_images().to(device)  # uint8 on the device: ~1/4 of float32
    val_images = val_set.uint8_images()
    if len(train_images) < 2:
        raise RDError(f"{config.data_root}/{config.category}: {len(train_images)} training image(s) after the "
                      f"validation split; at least 2 are needed")

    # --- synthetic validation (synthval.py): rank 0 scores it; it never touches the training RNG or weights
    validation = synthval.SyntheticValidation(config, train_set, val_set) if world.is_main else None
    record = asdict(config) | {
        "teacher_weights": weights_id,
        "teacher_imagenet_top1": teacher_imagenet_top1(config.backbone, weights_id),
        "teacher_warning": teacher_warning,
        "fast_path": fast.as_dict(),
        "val_names": train_set.val_names,
        "holdout_rule": train_set.holdout_rule,  # the hash hold-out, or the layout's validation folder
        "data": data_provenance(config.data_root, config.data_format, config.split_csv, config.category),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "versions": library_versions(),
        "hardware": describe_hardware(device),
        "world_size": world.size,
        "sync_bn": sync_bn,  # as resolved: on by default under torchrun for a BatchNorm student
        "synthetic_set": validation.provenance() if validation is not None else None,
    } | ({"rdpp": rdpp.recipe_record()} if config.method == rdpp.METHOD else {})
    if world.is_main:
        runs.atomic_write_json(config.run_dir / runs.CONFIG_FILE, record)

    audit = selection_audit.TestSetAudit(config, start_epoch) if world.is_main and config.audit_test else None
    noise = rdpp.NoisePairs(config.seed, config.image_size, device) if config.method == rdpp.METHOD else None
    step_function = recipe.train_step if noise is None else recipe.rdpp_train_step
    step = recipe.compiled_train_step(step_function) if fast.compile else step_function  # compiled once per run
    batches_per_epoch = sum(1 for _ in epoch_batches(len(train_images), config.batch_size, config.seed, 0,
                                                     world.rank, world.size))
    progress = tqdm(total=(config.epochs - start_epoch) * batches_per_epoch, desc=str(config.key), unit="batch",
                    disable=quiet, dynamic_ncols=True)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        net.train()
        reset_peak_memory(device)
        started, shown, seen = time.perf_counter(), 0.0, 0
        # loss, the 3 scales (and RD++'s terms), image-weighted
        sums = torch.zeros(4 + (0 if noise is None else len(rdpp.LOSS_TERMS)), device=device)
        grad_sums, steps = torch.zeros(2, device=device), 0  # gradient norms of bottleneck and student, per step
        batches = recipe.device_batches(len(train_images), config.batch_size, config.seed, epoch, device, world.rank,
                                        world.size)
        pairs = None if noise is None else noise.epoch(epoch, [len(indices) for indices, _ in batches])
        for index, (indices, global_size) in enumerate(batches):
            batch = fast.prepare(train_images[indices])
            if pairs is None:
                loss, terms = step(net, optimizer, batch, fast, device,
                                   loss_scale=world.size * len(indices) / global_size)
            else:  # RD++: the optimiser steps every ACCUMULATION_STEPS batches of the epoch, as the official loop
                patches, shuffle = pairs[index]
                update = (index + 1) % rdpp.ACCUMULATION_STEPS == 0
                loss, terms = step(net, optimizer, batch, noise.noisy(batch, patches), shuffle, fast, device,
                                   fresh=not pending, update=update)
                pending = not update
            sums += torch.stack([loss, *terms]) * len(indices)
            grad_sums += gradient_norms(model)  # read after the step: the gradients stay until the next zero_grad
            steps += 1
            seen += len(indices)
            progress.update()
            if not quiet and time.perf_counter() - shown > 0.5:  # .item() waits for the device: not every step
                shown = time.perf_counter()
                progress.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}",
                                     img_s=f"{world.size * seen / (shown - started):.1f}")
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([seen])]))
        seen = int(totals[-1])
        means = (totals[:-1] / seen).tolist()
        if not all(math.isfinite(v) for v in means):
            progress.close()
            raise NonFiniteLoss(f"{config.key}: the loss became {means[0]} in epoch {epoch}; stopped. The last good "
                                f"checkpoint {config.checkpoint_path} is kept (try a lower --lr or --amp off)")
        elapsed = time.perf_counter() - started
        if not world.is_main:  # rank 0 alone validates and writes; the others go on to the next epoch
            continue
        history.append({
            "epoch": epoch, "loss": means[0], "loss_scale1": means[1], "loss_scale2": means[2],
            "loss_scale3": means[3], "epoch_time_s": elapsed, "images_per_s": seen / elapsed,
            "val_loss": validation_loss(model, val_images, fast, device, config.batch_size),
            "peak_memory_mb": peak_memory_mb(device),
            **dict(zip(runs.GRAD_NORM_COLUMNS, (grad_sums / max(steps, 1)).tolist())),
            **validation.columns(epoch, model, fast, device),
            **dict(zip(runs.RDPP_LOSS_COLUMNS, means[4:])),  # RD++ runs only
        })
        runs.write_history(config.run_dir / runs.HISTORY_FILE, history)
        if audit is not None and validation.due(epoch):  # --audit-test: after the row, into its own file
            audit.record(epoch, model, fast, device, history[-1])
        best = synthval.select_epoch(history)
        # a new best epoch is checkpointed at once (last.pth first: a kill in between is repaired on resume)
        new_best = config.selection == recipe.SELECT_SYNTHETIC_VAL and best is not None and best["epoch"] == epoch
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs or new_best:
            # Adam's moments (2x the weights) are needed only to continue: a finished run drops them
            training_state = {"epoch": epoch, "history": history, "synthetic_best": best}
            if epoch < config.epochs or config.keep_optimizer:
                training_state["optimizer"] = optimizer.state_dict()
                if pending:  # RD++: gradients of a batch not yet stepped (an odd last batch) carry into the next epoch
                    training_state["pending_gradients"] = [p.grad for p in _optimised_parameters(optimizer)]
            save_checkpoint(config.checkpoint_path, model, backbone=config.backbone, image_size=config.image_size,
                            teacher_weights=weights_id, model_knobs=config.model_knobs, training_state=training_state,
                            teacher_seed=config.seed if weights_id == "random" else None,
                            teacher_sha256=teacher_sha256)
        if new_best:
            _save_best_checkpoint(config, model, weights_id, best, teacher_sha256)
    progress.close()
    distributed.barrier()  # the checkpoint is complete before any rank moves on
    return config.run_dir


def _optimised_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimiser's parameters in group order: the order of an RD++ checkpoint's pending gradients."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _restore_pending_gradients(optimizer: torch.optim.Optimizer, gradients: list | None, device: torch.device) -> bool:
    """Put an RD++ checkpoint's not-yet-stepped gradients back on the parameters; whether there were any."""
    if not gradients:
        return False
    parameters = _optimised_parameters(optimizer)
    if len(parameters) != len(gradients):
        raise CheckpointError(f"the checkpoint's pending gradients ({len(gradients)}) do not fit the model's "
                              f"{len(parameters)} parameters; train the run again with --restart")
    for parameter, gradient in zip(parameters, gradients):
        parameter.grad = None if gradient is None else gradient.to(device, memory_format=torch.preserve_format)
    return True


# --- the checkpoint of --selection synthetic-val (best.pth, beside last.pth)

def _save_best_checkpoint(config: TrainConfig, model: ReverseDistillation, weights_id: str,
                          best: dict, teacher_sha256: str) -> None:
    """Write the model as the run's selected epoch; its training state names the epoch and its scores."""
    save_checkpoint(config.best_checkpoint_path, model, backbone=config.backbone, image_size=config.image_size,
                    teacher_weights=weights_id, model_knobs=config.model_knobs,
                    training_state={**best, "selection": config.selection},
                    teacher_seed=config.seed if weights_id == "random" else None, teacher_sha256=teacher_sha256)


def _complete_best_checkpoint(config: TrainConfig, model: ReverseDistillation, weights_id: str,
                              history: list[dict], epoch: int, teacher_sha256: str) -> None:
    """After a kill between a new best's last.pth and best.pth, write best.pth from the resumed weights."""
    best = synthval.select_epoch(history)
    if (config.selection == recipe.SELECT_SYNTHETIC_VAL and best is not None and best["epoch"] == epoch
            and sweep.checkpoint_epoch(config.best_checkpoint_path) != epoch):
        _save_best_checkpoint(config, model, weights_id, best, teacher_sha256)


# ---------------------------------------------------------------------------------------------- CLI

add_arguments = sweep.add_train_arguments


def run(args: argparse.Namespace) -> int:
    """Train every selected run in turn; under torchrun, each run data-parallel over the group."""
    configs = sweep.configs_from_args(args)
    if not configs:
        raise RDError("no run selected: --categories, --backbones and --seeds must each name at least one")
    sweep.check_compile_toolchains(configs)  # before any data is read
    if args.resume:
        missing = [str(c.checkpoint_path) for c in configs if not c.checkpoint_path.is_file()]
        if missing:
            raise CheckpointError(f"--resume: no checkpoint to resume at {', '.join(missing[:3])}")
    sweep.preflight_runs(configs)  # every run's device and data before any folder exists
    weights_status = sweep.preflight_teacher_weights(configs)  # every rank: a failure stops all before they join
    space_warnings = [] if args.estimate_only else storage.check_free_space(
        configs, lambda config: 0 if args.restart else sweep.checkpoint_epoch(config.checkpoint_path),
        args.skip_space_check)
    with distributed.process_group(configs[0].device) as world:
        if world.is_main:
            print("\n".join(["teacher weights:", *weights_status, *space_warnings]), flush=True)
            print(f"training {len(configs)} run(s): " + ", ".join(str(c.key) for c in configs)
                  + (f" on {world.size} processes" if world.enabled else ""))
            if args.estimate_only or (not args.no_eta and not args.restart):
                print(sweep.estimate_sweep(configs, args.bench_json), flush=True)
        if args.estimate_only:
            return 0
        distributed.barrier()
        for config in configs:
            train_run(config, restart=args.restart)
        if world.is_main:
            print(training_summary(configs))
    return 0


def training_summary(configs: list[TrainConfig]) -> str:
    """What the sweep did, one row per run (epochs, last loss, time, images/s), and the next command."""
    rows = []
    for config in configs:
        history = runs.read_history(config.run_dir)
        last = None if history is None or history.empty else history.iloc[-1]
        rows.append({"run": str(config.key), "epochs": "-" if last is None else int(last["epoch"]),
                     "final loss": "-" if last is None else f"{last['loss']:.4f}",
                     "val loss": "-" if last is None else f"{last['val_loss']:.4f}",
                     "time": "-" if history is None else sweep.format_duration(history["epoch_time_s"].sum()),
                     "images/s": "-" if history is None else f"{runs.steady_images_per_s(history):.1f}"})
    table = pd.DataFrame(rows).to_string(index=False)
    commands = [f"next: python RD4AD-main/main.py test --results {results}"
                for results in sorted({config.results for config in configs})]
    return "\n".join(["", table, "", *commands])
