"""One instrument's share of the report's section "What differs between the teachers" (why.py renders them): a
module of its own so that the instrument modules, which build parts, and why.py, which lists the instruments,
import it without a circle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from plots import FigureItem

__all__ = ["WhyPart"]


@dataclass
class WhyPart:
    """One instrument's share of the Why section."""

    key: str  # short file-name-safe id: tables are written as tables/why_<key>_<name>.csv
    title: str  # its subsection heading
    text: str  # markdown: what was measured and how, then the templated sentences
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # shown in this order below the text
    figures: list["FigureItem"] = field(default_factory=list)  # FigureItem(kind="why", ...)
    finding: str | None = None  # one templated line for the findings list, with its interval
    missing: str | None = None  # set when the instrument did not run: what would add it (markdown)
