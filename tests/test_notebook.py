"""examples/quickstart.ipynb runs headlessly top to bottom, shows the seed model's table and every
table a cell makes, and is saved clean; the notebook view's share bars start from one edge."""

from __future__ import annotations

import ast
import re

import nbformat
import pytest
import torchvision
from nbclient import NotebookClient

from profiler import ProfileResult, profile
from profiler.render import COLUMNS

from conftest import EXAMPLES
from test_report import HTMLTable

NOTEBOOK = EXAMPLES / "quickstart.ipynb"

# the seed model (transformer_flops.py): per block q, k, v and out projections 4 * L*N*E*E, scores
# and weighted sum 2 * N*L*L*E, the MLP 2 * L*N*E*2E; parameters of the attention and the MLP
L, N, E, BLOCKS = 10, 32, 64, 2
SEED_MACS = BLOCKS * (4 * L * N * E * E + 2 * N * L * L * E + 2 * L * N * E * 2 * E)
SEED_PARAMS = BLOCKS * ((3 * E * E + 3 * E + E * E + E) + (E * 2 * E + 2 * E) + (2 * E * E + E))


@pytest.fixture(scope="module")
def executed():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    return notebook


def test_every_code_cell_runs_without_error(executed):
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code
    for index, cell in enumerate(code):
        errors = [output for output in cell.outputs if output.output_type == "error"]
        assert errors == [], f"code cell {index}: {errors[0].ename}: {errors[0].evalue}" if errors else ""
        assert cell.execution_count is not None


def test_seed_model_cell_shows_its_totals(executed):
    (cell,) = [c for c in executed.cells if c.cell_type == "code" and "seed_model()" in c.source]
    (result,) = [output for output in cell.outputs if output.output_type == "execute_result"]
    parsed = HTMLTable(result.data["text/html"])
    assert parsed.errors == []
    assert "table" in parsed.tags
    css, total = parsed.rows[-1]
    assert css == "total"
    cells = dict(zip(parsed.header, total))
    assert cells[COLUMNS["macs"]] in (f"{SEED_MACS:,}", f"{SEED_MACS / 10**6:.2f}M")
    assert cells[COLUMNS["params"]] in (f"{SEED_PARAMS:,}", f"{SEED_PARAMS / 10**3:.2f}K")
    assert (SEED_MACS, SEED_PARAMS) == (21_790_720, 66_432)  # the README's numbers
    assert result.data["text/plain"].startswith("ProfileResult(") and "\n" not in result.data["text/plain"]


def test_saved_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source.splitlines()[0]


def test_no_table_is_lost_in_the_middle_of_a_cell():
    """Only a cell's last expression is shown: before it, a result, a table or a report computed as a
    statement of its own is lost (``result.html(...)`` on its own line shows nothing)."""
    shows = {name for name in dir(ProfileResult) if not name.startswith("__")} | {"profile", "compare_with_thop"}
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for statement in ast.parse(cell.source).body[:-1]:
            if not isinstance(statement, ast.Expr):
                continue
            value = statement.value
            called = value.func if isinstance(value, ast.Call) else None
            name = getattr(called, "attr", getattr(called, "id", None))
            assert called is not None and name not in shows, f"{ast.unparse(statement)!r} is computed and never shown"


def test_a_table_displayed_mid_cell_is_shown(executed):
    (cell,) = [c for c in executed.cells if c.cell_type == "code" and "display(HTML(" in c.source]
    call = next(node for node in ast.walk(ast.parse(cell.source))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "html")
    options = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    (shown,) = [output for output in cell.outputs if output.output_type == "display_data"]
    # the same model built here: counts depend on shapes only, so the HTML is the same text
    result = profile(torchvision.models.resnet50(weights=None), input_size=(1, 3, 224, 224))
    assert shown.data["text/html"] == result.html(**options)
    parsed = HTMLTable(shown.data["text/html"])
    assert len(parsed.rows) == options["top"] + 1  # the ten layers and the Total row
    (last,) = [output for output in cell.outputs if output.output_type == "execute_result"]
    assert last.data["text/html"] == result._repr_html_()


BAR_CELL = re.compile(r'<td class="num">([^<]*)<span class="track( empty)?">(.*?)</span></td>')
BAR = re.compile(r'<span class="bar" style="width: ([0-9.]+)%"></span>')


def test_share_bars_start_from_one_edge(seed):
    """Each MACs % cell is its percentage, then a track of one fixed width ending the cell, the bar
    inside it from the track's left edge: every bar starts at the same x, whatever the text's width."""
    model, x = seed
    html = profile(model, (x,)).html(units="exact")
    style = re.search(r"\.hookprof \.track \{([^}]*)\}", html).group(1)
    assert re.search(r"(^|;)\s*width: \d+px", style) and "display: inline-block" in style
    assert re.search(r"\.hookprof \.bar \{[^}]*display: block", html)  # a block starts at its container's left
    parsed = HTMLTable(html)
    column = parsed.header.index(COLUMNS["macs_pct"])
    macs = parsed.header.index(COLUMNS["macs"])
    rows = [line for line in html.splitlines() if line.startswith("<tr")]
    assert len(rows) == len(parsed.rows)
    total = int(parsed.rows[-1][1][macs].replace(",", ""))
    for line, (_, texts) in zip(rows, parsed.rows):
        (match,) = BAR_CELL.findall(line)
        text, empty, inner = match
        assert text == texts[column] and not empty
        (width,) = BAR.findall(inner)
        assert width == f"{100 * int(texts[macs].replace(',', '')) / total:.1f}"
