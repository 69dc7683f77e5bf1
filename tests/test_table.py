"""The layer tree and its text table: invariants, options, a golden table, pure rendering."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from hooks import Counts, ModuleInfo, Record
from profiler import profile
from profiler.render import TableOptions, rows, text_table
from profiler.tree import build_tree, uncounted_summary
from conftest import Block, assert_tree_invariant
from test_report import HTMLTable, github_cells


class Small(nn.Module):
    """Calls blocks[0] twice, never calls ``unused``, and does functional work itself."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 2, bias=False)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        x = self.blocks[0](x)
        return self.head(x).softmax(-1)


GOLDEN = """\
Layer              Type            Output shape      Params    MACs    FLOPs    MACs %
-----------------  --------------  --------------  --------  ------  -------  --------
Small              Small           [3, 2]               272     720    1,887    100.0%
├─ softmax()       Tensor.softmax                                 0       15      0.0%
├─ embed           Linear          [3, 8]                40      96      192     13.3%
├─ blocks          ModuleList                           144     576    1,584     80.0%
│  ├─ 0 ×2         Block           [3, 8]                72     384    1,056     53.3%
│  │  ├─ add() ×2  Tensor.add                                     0       48      0.0%
│  │  ├─ proj ×2   Linear          [3, 8]                72     384      768     53.3%
│  │  └─ act ×2    GELU            [3, 8]                 0       0      240      0.0%
│  └─ 1            Block           [3, 8]                72     192      528     26.7%
│     ├─ add()     Tensor.add                                     0       24      0.0%
│     ├─ proj      Linear          [3, 8]                72     192      384     26.7%
│     └─ act       GELU            [3, 8]                 0       0      120      0.0%
├─ head            Linear          [3, 2]                16      48       96      6.7%
└─ unused          Linear          not run               72       0        0      0.0%
Total                                                   272     720    1,887    100.0%"""


@pytest.fixture
def small():
    torch.manual_seed(0)
    return profile(Small(), torch.rand(3, 4))


def test_golden_table(small):
    assert small.table(units="exact") == GOLDEN


def test_small_model_counts(small):
    linear = 3 * 4 * 8 + 3 * (3 * 8 * 8) + 3 * 8 * 2  # embed, three block calls, head
    assert small.total_macs == linear
    # GELU 5 and residual add 1 per element in 3 block calls; softmax over rows of 2: 3 * (3 * 2 - 1)
    assert small.total_flops == 2 * linear + 3 * (3 * 8) * (5 + 1) + 3 * (3 * 2 - 1)
    assert small.layer("blocks.0").calls == 2
    assert small.layer("unused").status == "not run"
    assert small.layer("blocks").status == "container"
    assert small.total_params == sum(p.numel() for p in Small().parameters())
    assert_tree_invariant(small.root)


def test_rows_sum_to_the_totals(small):
    top = [row for row in rows(small.root, depth=1)][1:]
    assert sum((row.counts for row in top), Counts()) == small.root.total


def test_options(small):
    github = small.table(depth=1, columns=("layer", "calls", "input_shape", "params_pct"), tablefmt="github")
    assert github.splitlines()[0] == "| Layer        |   Calls | Input shape   |   Params % |"
    assert "| ├─ embed     |       1 | [3, 4]        |      14.7% |" in github
    assert "blocks.0" not in github and "proj" not in github
    assert "720" in small.table(units="exact") and "1.89K" in small.table(units="human")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": ("layer", "weights")}, "unknown column(s) 'weights'; valid columns: layer, type"),
        ({"units": "metric"}, "unknown units 'metric'; valid units: human, exact"),
    ],
)
def test_bad_options_name_the_value(small, kwargs, message):
    with pytest.raises(ValueError) as info:
        small.table(**kwargs)
    assert message in str(info.value)


def test_resnet50_default_table_is_readable():
    result = profile(torchvision.models.resnet50(weights=None), torch.rand(1, 3, 64, 64))
    lines = result.table().splitlines()
    # header, rule, root, 10 top-level layers and 16 bottlenecks, total
    assert len(lines) == 2 + 1 + 10 + 16 + 1
    assert lines[-1].startswith("Total")
    assert_tree_invariant(result.root)


def test_rendering_needs_no_model():
    modules = [
        ModuleInfo("", "Net", 0, None, False),
        ModuleInfo("enc", "Encoder", 10, None, False),
        ModuleInfo("enc.fc", "Linear", 20, "linear_counts", False),
        ModuleInfo("odd", "Odd", 0, None, False),
    ]
    records = [
        Record("enc.fc", "Linear", None, "counted", ((2, 4),), ((2, 5),), 40, 80, 80, "linear_counts"),
        Record("enc", "torch.matmul", "torch.matmul", "counted", ((2, 5), (5, 5)), ((2, 5),), 50, 100, 100, "matmul_counts"),
        Record("enc", "Encoder", None, "traced", ((2, 4),), ((2, 5),)),
        Record("odd", "Odd", None, "uncounted", ((2, 5),), ()),
        Record("", "Net", None, "traced", ((2, 4),), ((2, 5),)),
    ]
    root = build_tree(modules, records)
    assert root.total == Counts(90, 180, 180)
    assert root.params == 30
    assert root.uncounted_calls == 1
    text = text_table(root, uncounted_summary(records), TableOptions(units="exact"))
    assert text.splitlines()[2].split() == ["Net", "Net", "[2,", "5]", "30", "90", "+?", "180", "+?", "100.0%"]
    assert "├─ matmul()" in text
    assert text.splitlines()[-1] == "  module Odd ×1 in 'odd'"


@pytest.fixture(scope="module")
def resnet18():
    return profile(torchvision.models.resnet18(weights=None), torch.rand(1, 3, 64, 64))


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%"


@pytest.mark.parametrize("render", ["table", "html"])
def test_subtree_table_totals_the_subtree(resnet18, render):
    sub = resnet18.layer("layer3")
    assert sub.params < resnet18.total_params  # a Total of the whole model would differ
    columns = ("layer", "params", "params_pct", "macs", "flops", "macs_pct")
    options = {"layer": "layer3", "depth": 1, "units": "exact", "columns": columns}
    if render == "table":
        header, body = github_cells(resnet18.table(tablefmt="github", **options))
    else:
        parsed = HTMLTable(resnet18.html(**options))
        header, body = parsed.header, [cells for _, cells in parsed.rows]
    shown = [dict(zip(header, row)) for row in body]
    assert [row["Layer"].lstrip("│├└─ ") for row in shown] == ["layer3", *(c.name.rpartition(".")[2] for c in sub.children), "Total"]
    total = shown[-1]
    assert (total["Params"], total["MACs"], total["FLOPs"]) == (f"{sub.params:,}", f"{sub.total.macs:,}", f"{sub.total.flops:,}")
    assert total["Params %"] == total["MACs %"] == shown[0]["MACs %"] == percent(1, 1)
    for child, row in zip(sub.children, shown[1:-1]):
        assert row["MACs %"] == percent(child.total.macs, sub.total.macs)
        assert row["Params %"] == percent(child.params, sub.params)


@pytest.mark.parametrize("render", ["table", "html"])
def test_subtree_note_says_what_the_percentages_are_of(resnet18, render):
    sub = resnet18.layer("layer3")
    note = (f"Total and percentages are of 'layer3': {percent(sub.total.macs, resnet18.total_macs)} of the model's "
            f"MACs, {percent(sub.params, resnet18.total_params)} of its params.")
    text = getattr(resnet18, render)(layer="layer3", depth=1)
    assert (note if render == "table" else note.replace("'", "&#x27;")) in text
    assert "are of" not in getattr(resnet18, render)(depth=1)  # the whole model needs no note


def test_subtree_ranking_totals_the_subtree(resnet18):
    sub = resnet18.layer("layer3")
    text = resnet18.table(layer="layer3", sort_by="macs", units="exact")
    total = next(line for line in text.splitlines() if line.startswith("Total"))
    assert total.split() == ["Total", f"{sub.params:,}", f"{sub.total.macs:,}", f"{sub.total.flops:,}", percent(1, 1)]
    assert "layer3" in text.split("\n\n")[-1] and "(self)" in text
