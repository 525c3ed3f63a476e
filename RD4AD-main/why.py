"""The report's "Why" section: instruments that test why one teacher wins, one module per instrument.

Each instrument module offers ``part(runs_frame, results, pairs) -> WhyPart | None`` that reads only results
files (no model code) and returns its method text, tables, figures and one templated finding line with an
interval; ``None`` when no run has what the instrument needs. This module only collects and renders the parts.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

import pandas as pd

import why_audit
import why_locality
import why_regions
import why_scales
import why_stability
from documents import markdown_table
from why_part import WhyPart

if TYPE_CHECKING:
    from plots import FigureItem

__all__ = ["BUILDERS", "WhyPart", "findings_markdown", "render_why", "why_parts", "why_tables"]


Builder = Callable[[pd.DataFrame, str, list[tuple[str, str]]], "WhyPart | None"]


# The instruments in the order the section shows them; each entry is an instrument module's ``part``.
BUILDERS: list[Builder] = [why_scales.part, why_regions.part, why_stability.part, why_locality.part, why_audit.part]


def why_parts(runs_frame: pd.DataFrame, results: str | os.PathLike, pairs: list[tuple[str, str]]) -> list[WhyPart]:
    """Every instrument's part for the compared runs (instruments without data are left out)."""
    parts = [builder(runs_frame, str(results), pairs) for builder in BUILDERS]
    return [part for part in parts if part is not None]


def findings_markdown(parts: list[WhyPart]) -> str:
    """The findings list: one templated line per instrument."""
    lines = [f"- **{part.title}**: {part.finding}" for part in parts if part.finding]
    return "\n".join(lines) if lines else "No instrument had the files it needs (see each run's results folder)."


def render_why(parts: list[WhyPart], level: int, figure_markdown: Callable[[list["FigureItem"]], list[str]]) -> str:
    """The Why section's markdown: findings first, then each instrument's text, tables and figures."""
    h, hh = "#" * level, "#" * (level + 1)
    out = [f"{h} Why: instruments that test why one teacher wins", findings_markdown(parts)]
    for part in parts:
        out += [f"{hh} {part.title}", part.text]
        out += [markdown_table(table) for table in part.tables.values() if not table.empty]
        out += figure_markdown(part.figures)
    return "\n\n".join(out)


def why_tables(parts: list[WhyPart]) -> dict[str, pd.DataFrame]:
    """Every Why table by its file name (without .csv)."""
    return {f"why_{part.key}_{name}": table for part in parts for name, table in part.tables.items()}
