"""The report's section "What differs between the teachers": descriptive instruments, one module per instrument.

Each instrument module offers ``part(runs_frame, results, pairs) -> WhyPart | None`` that reads only results
files (no model code) and returns its method text, tables, figures and one templated finding line with an
interval; ``None`` when no run has what the instrument needs. This module collects the parts, names the
instruments that did not run with the command that adds each, and renders the section. The instruments
describe how the teachers differ; only the scale ablation intervenes (on the anomaly map, not the teacher), so
none of them, and not this section's heading, says why one teacher wins.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
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

__all__ = ["INTRODUCTION", "WhyPart", "findings_markdown", "not_run_markdown", "render_why", "why_parts", "why_tables"]

HEADING = "What differs between the teachers"
Builder = Callable[[pd.DataFrame, str, list[tuple[str, str]]], "WhyPart | None"]


@dataclass(frozen=True)
class Instrument:
    """One instrument: its key and title, its part builder, and how to add it when it did not run."""

    key: str
    title: str
    build: Builder
    added_by: str  # markdown; ``{results}`` is the results folder
    stale: Callable[[pd.DataFrame, str], list[str]] | None = None  # files written by an older version, by name

    @classmethod
    def of(cls, module: ModuleType, stale: Callable[[pd.DataFrame, str], list[str]] | None = None) -> "Instrument":
        """The instrument of a why_* module: its KEY, TITLE, part and ADDED_BY."""
        return cls(module.KEY, module.TITLE, module.part, module.ADDED_BY, stale)


# The instruments in the order the section shows them.
INSTRUMENTS: list[Instrument] = [
    Instrument.of(why_scales),
    Instrument.of(why_regions),
    Instrument.of(why_stability),
    Instrument.of(why_locality, why_locality.stale),
    Instrument.of(why_audit),
]

INTRODUCTION = (
    "These instruments describe how the compared teachers' runs differ; none of them tests why one teacher comes "
    "out ahead, whatever the primary answers above say. Only the scale ablation intervenes, and on the anomaly map "
    "(a scale left out of the sum the map is made of), not on the teacher: its differences are caused by the "
    "map's scales, while the region bins, the training curves, the receptive fields and the audit are "
    "associations. Each interval says what it takes as random (training seeds, regions, validation normals or runs) "
    "and what it holds fixed (the categories, for the region, scale and stability intervals); "
    "docs/calibration.md checks by simulation that these three cover as promised.")


def why_parts(runs_frame: pd.DataFrame, results: str | os.PathLike, pairs: list[tuple[str, str]]) -> list[WhyPart]:
    """Every instrument's part for the compared runs, in order; an instrument without data is a part whose
    ``missing`` says what would add it (no tables, figures or finding)."""
    parts = []
    for instrument in INSTRUMENTS:
        part = instrument.build(runs_frame, str(results), pairs)
        if part is None:
            stale = instrument.stale(runs_frame, str(results)) if instrument.stale is not None else []
            how = instrument.added_by.format(results=results)
            if stale:
                how += (f" (found from an older version, not read: {', '.join(stale)}; the command measures them "
                        "again)")
            part = WhyPart(instrument.key, instrument.title, "", missing=how)
        parts.append(part)
    return parts


def findings_markdown(parts: list[WhyPart]) -> str:
    """The findings list: one templated line per instrument that ran."""
    lines = [f"- **{part.title}**: {part.finding}" for part in parts if part.missing is None and part.finding]
    return "\n".join(lines) if lines else "No instrument had the files it needs (see each run's results folder)."


def not_run_markdown(parts: list[WhyPart]) -> str:
    """How many instruments ran, and each one that did not with the command that adds it."""
    ran = [part for part in parts if part.missing is None]
    head = f"{len(ran)} of {len(parts)} instruments ran."
    missing = [f"- **{part.title}**: {part.missing}" for part in parts if part.missing is not None]
    return head if not missing else head + " Not run here, and what adds each:\n\n" + "\n".join(missing)


def render_why(parts: list[WhyPart], level: int, figure_markdown: Callable[[list["FigureItem"]], list[str]]) -> str:
    """The section's markdown: what the instruments can say, the findings, the instruments that did not run, then
    each instrument's text, tables and figures."""
    h, hh = "#" * level, "#" * (level + 1)
    out = [f"{h} {HEADING}", INTRODUCTION, findings_markdown(parts), not_run_markdown(parts)]
    for part in parts:
        if part.missing is not None:
            continue
        out += [f"{hh} {part.title}", part.text]
        out += [markdown_table(table) for table in part.tables.values() if not table.empty]
        out += figure_markdown(part.figures)
    return "\n\n".join(out)


def why_tables(parts: list[WhyPart]) -> dict[str, pd.DataFrame]:
    """Every Why table by its file name (without .csv)."""
    return {f"why_{part.key}_{name}": table for part in parts for name, table in part.tables.items()}
