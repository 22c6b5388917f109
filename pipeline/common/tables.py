"""Markdown tables and 'mean ± std' cells: one writer for every report of the project.

    markdown_table(["Method", "Acc-1"], [["Baseline", mean_std(0.51, 0.01)]])
    markdown_table(["shift", "top-1"], rows, align=("left", "right"))   # |---|---:|
    mean_and_spread([0.5, 0.7])         # '0.600 ± 0.141' (sample std over seeds)
    format_number(float("nan"), ".1%")  # 'n/a', never 'nan%'

Sweeps, experiment grids, the cross-camera benchmark and the robustness report all write
their tables through here, so they share one layout and one spelling of the spread ("±").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MISSING",
    "NOT_AVAILABLE",
    "SPREAD",
    "format_number",
    "markdown_table",
    "mean_and_spread",
    "mean_std",
]

SPREAD = "±"
MISSING = "-"  # a cell with no value (no run, no seed)
NOT_AVAILABLE = "n/a"  # a value that is undefined (e.g. a relative drop from a zero accuracy)
_RULES = {"left": "---", "right": "---:", "center": ":---:"}


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, align: Sequence[str] | None = None
) -> str:
    """A Markdown table; ``align`` gives 'left', 'right' or 'center' per column (default left)."""
    align = ["left"] * len(header) if align is None else list(align)
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |"]
    lines.append("|" + "|".join(_RULES[side] for side in align) + "|")
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_number(value: float | None, spec: str = ".3f") -> str:
    """``value`` in the format ``spec``; 'n/a' when it is None, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return NOT_AVAILABLE
    return format(value, spec)


def mean_std(mean: float, std: float, *, decimals: int = 3, signed: bool = False) -> str:
    """'mean ± std' with ``decimals`` decimals; ``signed`` writes the mean's sign (gains)."""
    sign = "+" if signed else ""
    return f"{mean:{sign}.{decimals}f} {SPREAD} {std:.{decimals}f}"


def mean_and_spread(values: Sequence[float | None], *, decimals: int = 3) -> str:
    """'mean ± std' of ``values`` (sample std over seeds); one value has no spread; none is '-'."""
    values = [value for value in values if value is not None]
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return mean_std(float(np.mean(values)), float(np.std(values, ddof=1)), decimals=decimals)
