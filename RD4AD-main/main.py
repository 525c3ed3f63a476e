"""Command line of the RD4AD swappable-backbone repository.

    python RD4AD-main/main.py {summary,synth,check-data,download,train,test,compare,analyse,bench,demo,calibrate} --help

Each sub-command lives in a module of its own that defines ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs (``import torch`` is slow).
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from errors import RDError  # noqa: E402  (needs the path above)
from process_setup import use_huge_pages  # noqa: E402

use_huge_pages()  # before any command imports torch

__all__ = ["COMMANDS", "HelpFormatter", "build_parser", "main"]

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("summary", "parameter counts, GFLOPs and feature shapes of an RD model"),
    "synth": ("synth_layouts", "write a synthetic data set: MVTec AD, MVTec AD 2 or MVTec LOCO layout (demo, tests)"),
    "check-data": ("check_data", "count and validate a data root (MVTec AD, VisA, MVTec AD 2, MVTec LOCO, split file)"),
    "download": ("download", "download, verify and extract MVTec AD or VisA; check and extract MVTec AD 2 / LOCO"),
    "train": ("train", "train RD models (sweeps over backbones, categories and seeds)"),
    "tune": ("tune", "pick each backbone's lr/epochs/beta1 by synthetic-anomaly validation (no test image)"),
    "test": ("evaluate", "evaluate trained runs: metrics.json and scores.csv"),
    "compare": ("report", "fair-comparison report from results files"),
    "analyse": ("analyse", "how local each teacher is: receptive fields and CKA on validation normals (report: Why)"),
    "predict": ("predict", "score new images with a trained model: scores.csv, map overlays, masks"),
    "bench": ("bench", "speed and memory benchmark, fast path vs naive path"),
    "demo": ("demo", "synthetic data -> train the fair pair -> test -> analyse -> compare"),
    "calibrate": ("calibration", "simulate studies: coverage, level and power of the report's answers (docs/)"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default in --help, unless it is None/False or the help text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
        return f"{text} (default: %(default)s)" if shown and action.option_strings else text


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (a launcher, a scheduler, kill) as an exception: ``finally`` blocks and atomic writes clean up."""
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    requested = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        # Import a command's module only when it is the one asked for: keeps `--help` and `synth` fast.
        if name == requested:
            importlib.import_module(module_name).add_arguments(command_parser)
            command_parser.set_defaults(module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(importlib.import_module(args.module).run(args) or 0)
    except RDError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no (permissions, a file where a folder was expected, ...)
        if error.filename is None:
            raise
        where = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
        print(f"error: {where}: {error.strerror or error}; check that the path exists, is of the expected kind "
              f"(file or folder) and that you may read and write it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
