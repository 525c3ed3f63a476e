"""Command-line conventions shared by every command: one vocabulary of flags, old spellings kept.

The same flag means the same thing everywhere: ``--backbones``, ``--categories``, ``--data-root``,
``--results``. An older spelling still works and prints a note naming the new one.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

__all__ = ["DeprecatedAlias", "add_deprecated_alias"]


class DeprecatedAlias(argparse.Action):
    """Stores the value under the new flag's destination and says, once, that the spelling is old."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is the old spelling of {self.new}; it still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden alias of the flag ``new`` (whose value lands in ``dest``)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)
