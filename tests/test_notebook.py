"""examples/quickstart.ipynb runs headlessly top to bottom, shows the seed model's table, and is saved clean."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

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
