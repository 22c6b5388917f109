"""The shared table writer and the Agg-only plotting entry point."""

from __future__ import annotations

import pytest

from pipeline.common import plots, tables


def test_markdown_table_layout_and_alignment():
    text = tables.markdown_table(["a", "b"], [[1, "x"], ["y", 2.5]], align=("left", "right"))
    assert text == "| a | b |\n|---|---:|\n| 1 | x |\n| y | 2.5 |\n"
    assert tables.markdown_table(["a"], [])[:12] == "| a |\n|---|\n"
    with pytest.raises(ValueError, match="2 alignments for 1 columns"):
        tables.markdown_table(["a"], [], align=("left", "left"))


def test_mean_std_one_spelling():
    assert tables.mean_std(0.5, 0.25) == "0.500 ± 0.250"
    assert tables.mean_std(0.4, 0.0, signed=True) == "+0.400 ± 0.000"
    assert tables.mean_std(-0.2, 0.01, signed=True, decimals=2) == "-0.20 ± 0.01"
    assert tables.mean_and_spread([0.5, 0.7]) == "0.600 ± 0.141"
    assert tables.mean_and_spread([0.5, None]) == "0.500"
    assert tables.mean_and_spread([None]) == tables.MISSING == "-"


def test_format_number_never_writes_nan():
    assert tables.format_number(0.25, ".1%") == "25.0%"
    for undefined in (float("nan"), float("inf"), None):
        assert tables.format_number(undefined, ".1%") == "n/a"


def test_pyplot_is_agg():
    plt = plots.pyplot()
    assert plt.get_backend().lower() == "agg"
