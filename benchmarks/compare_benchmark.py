"""How long `main.py compare` takes on a study of realistic size, and on which of its steps.

    .venv/bin/python benchmarks/compare_benchmark.py [--root /tmp/compare_study] [--results DIR] [--n-boot 2000]

Without ``--results`` it fabricates (once, under ``--root``) the study of issue 11: 15 MVTec category names x
3 seeds x resnet50 and convnext_tiny at 256 px, 150 test images each (tests/fake_results.py; ~2.8 GB, not
for git), then times the statistics (``report.build_report``: reading the runs, the resampling replicates,
every test), the figures (drawing) and the writing (PNG, CSV, markdown) with the default resamples, and the
time the pixel statistics alone would take with an exact pixel sort per resample instead (estimated from one
``metrics.pixel_metrics`` call per run times the resamples, the cost the per-image statistics avoid).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RD4AD-main"))
sys.path.insert(0, str(ROOT / "tests"))

import comparison  # noqa: E402  (needs the path above)
import metrics  # noqa: E402
import plots  # noqa: E402
import report  # noqa: E402
import runs  # noqa: E402


def study(root: Path) -> Path:
    """The fabricated study's results folder, written on first use."""
    from fake_results import write_study

    results = root / "results"
    if not any(results.glob("*/*/seed*/metrics.json")):
        started = time.perf_counter()
        write_study(root)
        print(f"fabricated the study under {root} in {time.perf_counter() - started:.0f} s")
    return results


def exact_sort_seconds(results: Path) -> float:
    """One exact pixel-metric pass (a sort of every pixel) of one run, the unit cost of a naive replicate."""
    run_dir = runs.find_runs(results)[0]
    data = runs.load_maps(run_dir)
    started = time.perf_counter()
    metrics.pixel_metrics(data["maps"].astype("float32"), data["masks"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/compare_study"), help="where the study is fabricated")
    parser.add_argument("--results", type=Path, default=None, help="time these results instead of the fabricated study")
    parser.add_argument("--n-boot", type=int, default=comparison.N_BOOT, help="bootstrap resamples")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: ROOT/report)")
    args = parser.parse_args()
    results = args.results or study(args.root)
    out = args.out or args.root / "report"

    started = time.perf_counter()
    built = report.build_report(results, n_boot=args.n_boot)
    statistics = time.perf_counter() - started
    started = time.perf_counter()
    figures = plots.make_figures(built.runs, built.comparison, built.results)
    drawing = time.perf_counter() - started
    started = time.perf_counter()
    report.write_report(built, out, figures)
    writing = time.perf_counter() - started

    n_runs = len(built.runs)
    naive = exact_sort_seconds(results) * args.n_boot * n_runs
    print(f"{n_runs} runs, {built.runs['category'].nunique()} categories, {args.n_boot} resamples")
    print(f"statistics {statistics:.1f} s, figures {drawing:.1f} s, writing {writing:.1f} s, "
          f"compare total {statistics + drawing + writing:.1f} s")
    print(f"pixel metrics by an exact sort per resample would take about {naive / 3600:.1f} h "
          f"({naive / statistics:.0f}x the statistics above)")


if __name__ == "__main__":
    main()
