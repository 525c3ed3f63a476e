"""Test-free tuning (``main.py tune``): each backbone's recipe picked by the synthetic-anomaly validation score.

``main.py tune --data-root ROOT --backbones resnet50,convnext_tiny --categories all [--pooled]
[--lr 0.001,0.0025,0.005] [--epochs 100,200] [--beta1 0.5,0.9] [--out tune]`` trains every setting of the grid
for each (backbone, category, seed), with the other settings from the usual train flags and ``--config``,
and scores each run on its synthetic validation set (synthval.py: made from validation normals, no test
image): the AUPRO of the run's selected epoch (``--selection``: the last, or the best synthetic-validation
epoch), averaged over seeds. Per backbone and category, or per backbone over all categories with
``--pooled`` (the mean over categories), the best setting wins: the highest AUPRO, ties broken by image AUROC,
then by fewer epochs (the shorter schedule: a saturated synthetic set favours no longer one), then by the earlier
grid entry. Written under ``--out``:

- ``tune.csv``        every (backbone, category or ``pooled``, setting) with its scores and ``chosen``;
- ``tune_runs.csv``   every run with its selected epoch and scores;
- ``configs/<backbone>.json`` (``--pooled``) or ``configs/<backbone>/<category>.json``: the chosen settings
  (``<backbone>`` is the arm label: ``resnet50+rdpp`` for an RD++ arm, whose file records its method),
  which ``main.py train --config FILE`` takes as is (the study's --seeds, --results, ... come from its flags);
- ``runs/<setting>/{results,checkpoints}/``: the tune runs, apart from any study run. A killed tune resumes
  like ``train``.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

import runs
import sweep
import synthval
from errors import RDError
from recipe import TrainConfig
from train import train_run

__all__ = ["DEFAULT_LRS", "POOLED", "Setting", "add_arguments", "choose", "config_file_values", "grid_from_args",
           "run", "score_runs", "tune"]

DEFAULT_LRS = "0.001,0.0025,0.005"
POOLED = "pooled"  # the category column of a choice made over all categories
# TrainConfig fields a chosen config file leaves to the study's flags: the run's identity, where it writes, the audit
_NOT_IN_CONFIG_FILES = ("backbone", "category", "seed", "results", "checkpoints", "device", "audit_test")
_SCORES = list(runs.SYNTH_VAL_COLUMNS)


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    lr: float
    beta1: float
    epochs: int

    @property
    def name(self) -> str:
        """The folder of its runs, e.g. ``lr0.0025_beta1-0.5_epochs200``."""
        return f"lr{self.lr:g}_beta1-{self.beta1:g}_epochs{self.epochs}"


# ---------------------------------------------------------------------------------------------- the grid

def _grid_values(text: str | None, flag: str, kind: type, default: Any) -> list:
    """A comma list flag's distinct values in order, or ``[default]`` when not given."""
    if text is None:
        return [default]
    values = list(dict.fromkeys(sweep.parse_list(str(text), flag, kind)))
    if not values:
        raise RDError(f"{flag} {text!r}: expected at least one value")
    return values


def grid_from_args(args: argparse.Namespace, base: TrainConfig) -> list[Setting]:
    """Every (lr, beta1, epochs) of ``--lr``, ``--beta1`` and ``--epochs``; unlisted ones keep ``base``'s value."""
    lrs = _grid_values(args.lr, "--lr", float, base.lr)
    betas = _grid_values(args.beta1, "--beta1", float, base.beta1)
    epochs = _grid_values(args.epochs, "--epochs", int, base.epochs)
    if any(lr <= 0 for lr in lrs):
        raise RDError(f"--lr {args.lr}: expected learning rates > 0")
    if any(not 0 <= beta < 1 for beta in betas):
        raise RDError(f"--beta1 {args.beta1}: expected values in [0, 1)")
    if any(epoch < 1 for epoch in epochs):
        raise RDError(f"--epochs {args.epochs}: expected whole numbers of epochs >= 1")
    return [Setting(lr, beta, epoch) for epoch in epochs for beta in betas for lr in lrs]


def _base_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per (backbone, category, seed) from the train flags and --config, before the grid."""
    if args.results or args.checkpoints:
        raise RDError("--results/--checkpoints: tune writes its runs under --out (runs/<setting>/), apart from study "
                      "runs; pass --out instead")
    plain = copy.copy(args)
    plain.lr = plain.beta1 = plain.epochs = None  # the grid flags are lists; each setting fills them in
    configs = sweep.configs_from_args(plain)
    if not configs:
        raise RDError("no run selected: --categories, --backbones and --seeds must each name at least one")
    sweep.check_compile_toolchains(configs)  # before any data is read
    return configs


def _tune_config(config: TrainConfig, setting: Setting, out: Path) -> TrainConfig:
    folder = out / "runs" / setting.name
    return replace(config, lr=setting.lr, beta1=setting.beta1, epochs=setting.epochs,
                   results=str(folder / "results"), checkpoints=str(folder / "checkpoints"))


# ---------------------------------------------------------------------------------------------- scores and choice

def score_runs(planned: list[tuple[Setting, TrainConfig]]) -> pd.DataFrame:
    """One row per trained tune run: its setting, selected epoch and synthetic-validation scores."""
    rows = []
    for setting, config in planned:
        chosen = synthval.run_selection(config.run_dir, config.selection)
        rows.append({"backbone": config.key.arm, "category": config.category, "seed": config.seed,  # arm: +rdpp
                     "setting": setting.name, "lr": setting.lr, "beta1": setting.beta1, "epochs": setting.epochs,
                     "selection": config.selection, "selected_epoch": chosen["epoch"],
                     **{column: chosen[column] for column in _SCORES}, "run_dir": str(config.run_dir)})
    return pd.DataFrame(rows)


def choose(run_scores: pd.DataFrame, grid: list[Setting], pooled: bool) -> pd.DataFrame:
    """Every (backbone, category or ``pooled``, setting) with its mean scores (over seeds, then categories) and
    ``chosen`` (1 for the best of its group: AUPRO, then image AUROC, then fewer epochs, then grid order)."""
    per_category = run_scores.groupby(["backbone", "category", "setting"], sort=False)[_SCORES].mean().reset_index()
    seeds = run_scores.groupby(["backbone", "category", "setting"], sort=False)["seed"].nunique().to_numpy()
    per_category["n_runs"] = seeds
    if pooled:
        grouped = per_category.groupby(["backbone", "setting"], sort=False)
        table = grouped[_SCORES].mean().reset_index()
        table.insert(1, "category", POOLED)
        table["n_runs"] = grouped["n_runs"].sum().to_numpy()
    else:
        table = per_category
    order = {setting.name: index for index, setting in enumerate(grid)}
    by_name = {setting.name: setting for setting in grid}
    table["lr"] = [by_name[name].lr for name in table["setting"]]
    table["beta1"] = [by_name[name].beta1 for name in table["setting"]]
    table["epochs"] = [by_name[name].epochs for name in table["setting"]]
    table["chosen"] = 0
    for _, group in table.groupby(["backbone", "category"], sort=False):
        best = max(group.index, key=lambda i: (table.at[i, "synth_aupro"], table.at[i, "synth_image_auroc"],
                                               -table.at[i, "epochs"], -order[table.at[i, "setting"]]))
        table.at[best, "chosen"] = 1
    table["grid_index"] = [order[name] for name in table["setting"]]
    table = table.sort_values(["backbone", "category", "grid_index"], kind="stable", ignore_index=True)
    columns = ["backbone", "category", "setting", "lr", "beta1", "epochs", "n_runs", *_SCORES, "chosen"]
    return table[columns]


def config_file_values(config: TrainConfig, categories: list[str], tuned_by: str | None = None) -> dict[str, Any]:
    """A ``--config`` file's content: the tuned run's settings, its backbone and categories, and the tune.csv that
    chose them (``tuned_by``: recorded by the runs, named by compare); seeds and folders are left to the study's
    flags."""
    values = {f.name: getattr(config, f.name) for f in fields(TrainConfig) if f.name not in _NOT_IN_CONFIG_FILES}
    return values | {"backbones": [config.backbone], "categories": categories, "tuned_by": tuned_by}


def _config_path(out: Path, backbone: str, category: str) -> Path:
    return out / "configs" / (f"{backbone}.json" if category == POOLED else f"{backbone}/{category}.json")


def _write_config_files(table: pd.DataFrame, planned: list[tuple[Setting, TrainConfig]], out: Path) -> list[Path]:
    """One config file per chosen (backbone, category or pooled)."""
    written = []
    for row in table[table["chosen"] == 1].itertuples():
        matching = [c for s, c in planned if s.name == row.setting and c.key.arm == row.backbone
                    and (row.category == POOLED or c.category == row.category)]
        categories = sorted({c.category for c in matching})
        path = _config_path(out, row.backbone, row.category)
        runs.atomic_write_json(path, config_file_values(matching[0], categories, str(out / "tune.csv")))
        written.append(path)
    return written


def _summary_table(table: pd.DataFrame) -> str:
    """The grid as text: one row per setting, one column per (backbone, category); AUPRO / image AUROC in %,
    ``*`` on the chosen setting."""
    cells = table.assign(
        group=table["backbone"] + "/" + table["category"],
        cell=[f"{100 * a:.2f} / {100 * i:.2f}{' *' if c else '  '}"
              for a, i, c in zip(table["synth_aupro"], table["synth_image_auroc"], table["chosen"])])
    grid = cells.pivot(index="setting", columns="group", values="cell").reindex(list(dict.fromkeys(table["setting"])))
    return ("synthetic-validation AUPRO / image AUROC (%), * = chosen\n" + grid.to_string())


# ---------------------------------------------------------------------------------------------- the command

def tune(args: argparse.Namespace) -> pd.DataFrame:
    """Train the grid (resuming), score and choose; writes tune.csv, tune_runs.csv and the config files."""
    out = Path(args.out)
    base = _base_configs(args)
    grid = grid_from_args(args, base[0])
    planned = [(setting, _tune_config(config, setting, out)) for setting in grid for config in base]
    print(f"tune: {len(grid)} setting(s) x {len(base)} run(s) = {len(planned)} training run(s) under {out / 'runs'}")
    if not args.no_eta and not args.restart:
        print(sweep.estimate_sweep([config for _, config in planned], args.bench_json), flush=True)
    if args.resume:
        missing = [str(config.checkpoint_path) for _, config in planned if not config.checkpoint_path.is_file()]
        if missing:
            raise RDError(f"--resume: no checkpoint to resume at {', '.join(missing[:3])}")
    for _, config in tqdm(planned, desc="tune grid", unit="run", dynamic_ncols=True):
        train_run(config, restart=args.restart)
    run_scores = score_runs(planned)
    table = choose(run_scores, grid, args.pooled)
    runs.write_csv(out / "tune_runs.csv", run_scores.columns, run_scores.itertuples(index=False))
    runs.write_csv(out / "tune.csv", table.columns, table.itertuples(index=False))
    written = _write_config_files(table, planned, out)
    print(_summary_table(table))
    print(f"tune: {out / 'tune.csv'}; chosen configs (main.py train --config FILE): "
          + ", ".join(str(path) for path in written))
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train flags, with --lr, --epochs and --beta1 as comma lists (the grid), plus --out and --pooled."""
    sweep.add_train_arguments(parser, grid_lrs=DEFAULT_LRS)  # --epochs, --beta1: the one of --config or TrainConfig
    parser.add_argument("--out", default="tune", help="folder of tune.csv, the chosen configs and the tune runs")
    parser.add_argument("--pooled", action="store_true",
                        help="one choice per backbone over all categories (mean score); default: per category")


def run(args: argparse.Namespace) -> int:
    tune(args)
    return 0
