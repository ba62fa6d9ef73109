"""CSV export: a cell a spreadsheet would run as a formula is escaped."""

from __future__ import annotations

import csv
import io

import pytest

from sendqueue.services.retry.admin.parked import _csv_line, csv_cell


@pytest.mark.parametrize(
    "value",
    ['=HYPERLINK("http://evil")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\r=1"],
)
def test_a_formula_is_escaped(value):
    assert csv_cell(value) == "'" + value
    [row] = list(csv.reader(io.StringIO(_csv_line([value, "ok"]).decode())))
    assert row == ["'" + value, "ok"]


@pytest.mark.parametrize("value", ["1.2.840.10008", "PAT-1", "a=b", "", 3, 1.5, -1])
def test_anything_else_is_kept(value):
    assert csv_cell(value) == value
    assert csv_cell(None) == ""
