"""Names from a model are data, never markup: every renderer keeps them in their cell and row.

Module names may hold any character but ``.`` (``add_module("a|b", ...)``, ``"new\\nline"``) and
type names any at all (``type("<i>Opaque</i>", ...)``); a table must show them, escaped, with
neither an extra cell, an extra row, nor raw HTML.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from profiler import UncountedWarning, compare_with_thop, profile
from profiler.render import DEFAULT_COLUMNS, printable

from test_report import HTMLTable

OPAQUE = "<i>Opaque</i>"
PIPE, NEWLINE, TAG, TAB, ESCAPE_CODE = "pipe|name", "new\nline", "<b>bold</b>", "tab\tname", "bell\x07\x1b[31mred"
NAMES = (PIPE, NEWLINE, TAG, TAB, ESCAPE_CODE)


def _opaque_forward(self, x):
    return [0.5] * 4  # no torch function, no rule: uncounted


Hostile = type(OPAQUE, (nn.Module,), {"forward": _opaque_forward})


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(
            [(PIPE, nn.Linear(4, 4)), (NEWLINE, nn.Linear(4, 4)), (TAG, nn.ReLU()), (TAB, nn.Identity()),
             (ESCAPE_CODE, nn.Linear(4, 4))]
        ))
        self.opaque = Hostile()

    def forward(self, x):
        x = self.body(x)
        self.opaque(x)
        return x


@pytest.fixture(scope="module")
def result():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncountedWarning)
        return profile(Model(), torch.rand(2, 4))


def layer_names(result) -> list[str]:
    return [layer.name for layer in result.layers]


def test_the_records_keep_the_names_as_they_are(result):
    assert [f"body.{name}" for name in NAMES] == [n for n in layer_names(result) if n.startswith("body.")]
    assert [u.name for u in result.uncounted] == [OPAQUE]


def markdown(text: str) -> str:
    r"""GitHub markdown's escapes for a cell: ``\|`` keeps a pipe in its cell, ``\<`` is no HTML."""
    return re.sub(r"([\\|<>&])", r"\\\1", text)


@pytest.mark.parametrize("tablefmt", ["simple", "plain", "grid", "rst", "github", "pipe", "tsv"])
def test_one_line_per_row_in_text_formats(result, tablefmt):
    text = result.table(depth=2, tablefmt=tablefmt)
    # each name on exactly one line, its control characters shown as escapes (\n, \t, \x1b)
    for name in NAMES:
        shown = markdown(printable(name)) if tablefmt in ("github", "pipe") else printable(name)
        assert sum(shown in line for line in text.splitlines()) == 1, name
    assert not {"\x07", "\x1b"} & set(text)
    assert NEWLINE.split("\n")[1] not in [line.strip() for line in text.splitlines()]  # "line" is no row of its own
    if tablefmt == "tsv":
        table = text.split("\n\n")[0].splitlines()
        assert {line.count("\t") for line in table} == {len(DEFAULT_COLUMNS) - 1}


def markdown_cells(line: str) -> list[str]:
    r"""A GitHub markdown row split where GitHub splits it: at ``|`` not escaped by ``\``."""
    cells, cell, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if escaped:
            cell, escaped = cell + ch, False
        elif ch == "\\":
            cell, escaped = cell + ch, True
        elif ch == "|":
            cells, cell = cells + [cell], ""
        else:
            cell += ch
    return [*cells, cell]


def unescape_markdown(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.strip())


@pytest.mark.parametrize("options", [{"depth": 2}, {"sort_by": "macs"}], ids=["tree", "sorted"])
def test_markdown_rows_have_one_cell_per_column(result, options):
    text = result.to_markdown(**options)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    ranked = "sort_by" in options
    shown = result.layers if ranked else [layer for layer in result.layers if layer.depth <= options["depth"]]
    assert len(rows) == 2 + len(shown) + 1  # header, rule, layers, totals
    assert {len(markdown_cells(line)) for line in rows} == {len(DEFAULT_COLUMNS)}
    labels = [unescape_markdown(markdown_cells(line)[0]).lstrip("│├└─ ") for line in rows[2:]]
    for name in NAMES:
        assert printable(f"body.{name}" if ranked else name) in labels  # a ranking shows full names
    types = [unescape_markdown(markdown_cells(line)[1]) for line in rows[2:]]
    assert OPAQUE in types
    assert "<i>" not in text  # raw HTML would render in markdown: only escaped "\<i\>" is there


def test_markdown_notes_are_not_table_rows(result):
    text = result.to_markdown(depth=2)
    table, _, notes = text.partition("\n\n")
    assert all(line.startswith("|") for line in table.splitlines())
    assert notes.startswith("Uncounted") and "\\<i\\>Opaque\\</i\\>" in notes


@pytest.mark.parametrize("render", ["tablefmt-html", "notebook"])
@pytest.mark.parametrize("options", [{"depth": 2}, {"sort_by": "macs", "top": 3}, {"layer": "body"}],
                         ids=["tree", "sorted", "subtree"])
def test_html_has_no_markup_from_names(result, render, options):
    html = result.table(tablefmt="html", **options) if render == "tablefmt-html" else result.html(**options)
    parsed = HTMLTable(html)
    assert parsed.errors == []
    assert {"i", "b", "script"} & set(parsed.tags) == set()
    text = re.sub(r"<[^>]+>", "", html)
    assert OPAQUE not in text  # escaped: "&lt;i&gt;Opaque&lt;/i&gt;"
    assert "&lt;i&gt;Opaque&lt;/i&gt;" in html


def test_notebook_html_shows_the_names_as_text(result):
    parsed = HTMLTable(result.html(depth=2))
    labels = [cells[0] for _, cells in parsed.rows]
    for name in NAMES:
        assert printable(name) in labels
    assert [item.split(" ×")[0] for item in parsed.items] == [f"module {OPAQUE}"]


def test_html_tablefmt_notes_are_paragraphs(result):
    html = result.table(tablefmt="html", depth=2)
    after = html.split("</table>")[1]
    assert after.strip().startswith("<p>") and "&lt;i&gt;Opaque&lt;/i&gt;" in after


def test_latex_notes_are_escaped(result):
    text = result.table(tablefmt="latex", depth=1, layer="body")
    notes = text.split("\\end{tabular}")[1]
    assert "\\%" in notes and "%" not in notes.replace("\\%", "")
    assert "\\ensuremath{<}i\\ensuremath{>}Opaque" in notes


def test_csv_and_json_round_trip_the_names(result):
    assert [r["name"] for r in csv.DictReader(io.StringIO(result.to_csv()))] == layer_names(result)
    data = json.loads(result.to_json())
    assert [layer["name"] for layer in data["layers"]] == layer_names(result)
    assert data["uncounted"][0]["name"] == OPAQUE


def test_thop_comparison_table_keeps_rows_and_cells():
    pytest.importorskip("thop")
    model = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comparison = compare_with_thop(model, (torch.rand(2, 4),))
    text = comparison.table(all_layers=True, tablefmt="github")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(comparison.rows) + 2  # header, rule, layers, two totals
    assert [cell.strip() for cell in markdown_cells(rows[0])] == ["Layer", "Type", "hookprof MACs", "thop MACs",
                                                                  "Difference", "Reason"]
    assert {len(markdown_cells(line)) for line in rows} == {len(markdown_cells(rows[0]))}
    assert len(text.split("\n\n")[0].splitlines()) == len(rows)
    assert [unescape_markdown(markdown_cells(line)[0]) for line in rows[2:-2]] == [
        printable(row.name) or "(model)" for row in comparison.rows
    ]
