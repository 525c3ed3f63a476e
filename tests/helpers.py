"""Helpers shared by the tests (not fixtures: plain functions)."""
from __future__ import annotations

import sys

import main

__all__ = ["run_main"]


def run_main(*argv: str) -> int:
    """``main.py ARGV`` in this process; its exit status (argparse's SystemExit included), sys.argv restored."""
    saved = sys.argv[:]
    try:
        return main.main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        sys.argv = saved
