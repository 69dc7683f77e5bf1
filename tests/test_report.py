"""The report: the HTML view, table options, exports, per-layer timing and ``input_size=``.

Every expected number comes from the result object or from a formula on the model's shapes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
import warnings
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

from profiler import UncountedWarning, profile
from profiler.render import COLUMNS, DEFAULT_COLUMNS, SORT_KEYS
from profiler.units import UNITS

from conftest import Block, assert_tree_invariant, load_example

VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class HTMLTable(HTMLParser):
    """Parses an HTML fragment: every tag in order, nesting errors, and the table's cells as text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.open: list[str] = []
        self.header: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []  # (the <tr>'s class, its <td> texts)
        self.items: list[str] = []  # the texts of <li> elements
        self._row: list[str] | None = None
        self._text: list[str] | None = None
        self._row_class = ""
        self.feed(html)
        self.close()
        if self.open:
            self.errors.append(f"never closed: {self.open}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID_TAGS:
            self.open.append(tag)
        if tag == "tr":
            self._row, self._row_class = [], dict(attrs).get("class") or ""
        elif tag in ("td", "th", "li"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()
        if tag in ("td", "th") and self._text is not None and self._row is not None:
            self._row.append("".join(self._text).strip())
            self._text = None
        elif tag == "li" and self._text is not None:
            self.items.append("".join(self._text).strip())
            self._text = None
        elif tag == "tr" and self._row is not None:
            if "thead" in self.open:
                self.header = self._row
            else:
                self.rows.append((self._row_class, self._row))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def github_cells(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of a ``tablefmt="github"`` table (the uncounted note is skipped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines]
    return split[0], split[2:]


def strip_glyphs(label: str) -> str:
    return label.lstrip("│├└─ ")


def text_grid(result, **options) -> tuple[list[str], list[list[str]]]:
    """The text table's header and rows (totals last), tree glyphs removed, for comparing with HTML."""
    header, body = github_cells(result.table(tablefmt="github", **options))
    layer = header.index(COLUMNS["layer"]) if COLUMNS["layer"] in header else None
    if layer is not None:
        for row in body:
            row[layer] = strip_glyphs(row[layer])
    return header, body


def html_grid(result, **options) -> tuple[list[str], list[list[str]]]:
    parsed = HTMLTable(result.html(**options))
    return parsed.header, [cells for _, cells in parsed.rows]


def as_dicts(header: list[str], rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(header, row)) for row in rows]


def exact(n: int) -> str:
    return f"{n:,}"


class Net(nn.Module):
    """Calls ``blocks[0]`` twice, never calls ``unused``, and calls a torch function without a rule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 2)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        x = self.blocks[0](x)
        return torch.fft.fft(self.head(x)).real.softmax(-1)  # aten._fft_r2c has no rule


@pytest.fixture(scope="module")
def seed_result():
    model, x = load_example("transformer_flops").seed_model()
    return profile(model, inputs=(x,))


@pytest.fixture(scope="module")
def net_result():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncountedWarning)
        return profile(Net(), torch.rand(3, 4))


@pytest.fixture(scope="module")
def timed_result():
    model, x = load_example("transformer_flops").seed_model()
    return profile(model, inputs=(x,), measure_time=True, repeats=3, warmup=1)


# ---------------------------------------------------------------- HTML


@pytest.mark.parametrize("render", ["_repr_html_", "html"])
def test_html_is_well_formed_without_script(seed_result, render):
    html = getattr(seed_result, render)()
    parsed = HTMLTable(html)
    assert parsed.errors == []
    assert "table" in parsed.tags
    assert "script" not in parsed.tags
    assert "<script" not in html.lower()


def test_repr_html_is_the_default_html(seed_result):
    assert seed_result._repr_html_() == seed_result.html()


OPTION_SETS = [
    pytest.param({}, id="default"),
    pytest.param({"depth": 0}, id="depth-0"),
    pytest.param({"depth": 1}, id="depth-1"),
    pytest.param({"depth": 2, "units": "exact"}, id="depth-2-exact"),
    pytest.param({"columns": ("layer", "input_shape", "output_shape", "calls", "params_pct", "macs")}, id="columns"),
    pytest.param({"columns": tuple(c for c in COLUMNS if c not in ("time", "flops_per_s", "bwd_flops", "act_bytes", "roofline_time", "bound"))},
                 id="all-columns"),
    pytest.param({"sort_by": "macs", "top": 5}, id="sort-macs-top-5"),
    pytest.param({"sort_by": "params", "depth": 2}, id="sort-params-depth-2"),
    pytest.param({"top": 4}, id="tree-top-4"),
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("which", ["seed_result", "net_result"])
def test_html_shows_the_text_tables_rows_and_cells(request, which, options):
    result = request.getfixturevalue(which)
    text_header, text_rows = text_grid(result, **options)
    html_header, html_rows = html_grid(result, **options)
    # one <tr> per shown row, plus the header row and the totals row
    parsed = HTMLTable(result.html(**options))
    assert parsed.tags.count("tr") == len(text_rows) + 1
    assert [css for css, _ in parsed.rows].count("total") == 1 and parsed.rows[-1][0] == "total"
    assert html_header == text_header
    assert html_rows == text_rows


def test_html_totals_row(seed_result):
    header, rows = html_grid(seed_result, units="exact")
    total = dict(zip(header, rows[-1]))
    assert total[COLUMNS["layer"]] == "Total"
    assert total[COLUMNS["macs"]] == exact(seed_result.total_macs)
    assert total[COLUMNS["flops"]] == exact(seed_result.total_flops)
    assert total[COLUMNS["params"]] == exact(seed_result.total_params)


def test_html_human_units(seed_result):
    header, rows = html_grid(seed_result)
    total = dict(zip(header, rows[-1]))
    assert total[COLUMNS["macs"]] == f"{seed_result.total_macs / 10**6:.2f}M"
    assert total[COLUMNS["params"]] == f"{seed_result.total_params / 10**3:.2f}K"


def test_html_lists_uncounted_work(net_result, seed_result):
    (uncounted,) = net_result.uncounted
    parsed = HTMLTable(net_result.html())
    assert parsed.errors == []
    assert len(parsed.items) == 1
    assert uncounted.name in parsed.items[0] and f"×{uncounted.calls}" in parsed.items[0]
    assert "Uncounted" in net_result.html()
    assert HTMLTable(seed_result.html()).items == []
    assert "Uncounted" not in seed_result.html()


def test_repr_is_one_short_line(seed_result, net_result, timed_result):
    for result in (seed_result, net_result, timed_result):
        text = repr(result)
        assert "\n" not in text and len(text) < 120
        assert exact(result.total_macs) in text and exact(result.total_params) in text


# ---------------------------------------------------------------- table options


@pytest.mark.parametrize("render", ["table", "html"])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_depth_limits_the_rows(seed_result, render, depth):
    grid = text_grid if render == "table" else html_grid
    header, rows = grid(seed_result, depth=depth, columns=("layer",))
    expected = [layer for layer in seed_result.layers if layer.depth <= depth]
    assert len(rows) == len(expected) + 1


@pytest.mark.parametrize("render", ["table", "html"])
def test_columns_choose_what_is_shown(net_result, render):
    grid = text_grid if render == "table" else html_grid
    columns = ("layer", "input_shape", "calls", "params_pct")
    header, rows = grid(net_result, depth=2, columns=columns)
    assert header == [COLUMNS[c] for c in columns]
    cells = {row[0]: dict(zip(header, row)) for row in rows[:-1]}
    embed = net_result.layer("embed")
    assert cells["embed"]["Input shape"] == ", ".join(str(list(s)) for s in embed.input_shapes)
    assert cells["0 ×2"]["Calls"] == str(net_result.layer("blocks.0").calls) == "2"
    assert cells["embed"]["Params %"] == f"{100 * embed.params / net_result.total_params:.1f}%"
    assert rows[-1][header.index("Params %")] == "100.0%"


OWN_VALUE = {
    "macs": lambda layer: layer.own.macs,
    "flops": lambda layer: layer.own.flops,
    "params": lambda layer: layer.own_params,
    "time": lambda layer: layer.own_time,
}


def ranked_layers(result, header: list[str], rows: list[list[str]]):
    by_label = {layer.name or layer.type: layer for layer in result.layers}
    return [by_label[re.sub(r" ×\d+$", "", row[header.index("Layer")])] for row in rows[:-1]]


@pytest.mark.parametrize("render", ["table", "html"])
@pytest.mark.parametrize("key", ["macs", "flops", "params"])
@pytest.mark.parametrize("which", ["seed_result", "net_result"])
def test_sort_by_ranks_each_layers_own_work(request, which, render, key):
    result = request.getfixturevalue(which)
    top = 4
    grid = text_grid if render == "table" else html_grid
    header, rows = grid(result, sort_by=key, top=top, units="exact")
    assert len(rows) == top + 1
    layers = ranked_layers(result, header, rows)
    values = [OWN_VALUE[key](layer) for layer in layers]
    assert values == sorted(values, reverse=True)
    assert values[0] == max(OWN_VALUE[key](layer) for layer in result.layers)
    assert len({layer.name for layer in layers}) == top
    # the numbers shown are the layer's own; the headers are the usual ones and one note says so
    column = COLUMNS[key]
    assert header == [COLUMNS[c] for c in DEFAULT_COLUMNS]
    rendered = getattr(result, render)(sort_by=key, top=top, units="exact")
    assert rendered.count("(self)") == 1
    assert f"Ranked by {COLUMNS[key]}; each row is one layer alone (self), without its children." in rendered
    for layer, row in zip(layers, rows):
        shown = row[header.index(column)].removesuffix(" +?")  # "+?": some of its work has no rule
        assert shown == exact(OWN_VALUE[key](layer)) or (shown == "uncounted" and OWN_VALUE[key](layer) == 0)


def test_sort_by_without_top_lists_every_layer(seed_result):
    header, rows = text_grid(seed_result, sort_by="macs", columns=("layer",))
    assert len(rows) == len(seed_result.layers) + 1


def test_units_exact_and_human(seed_result):
    exact_text = seed_result.table(units="exact")
    human_text = seed_result.table(units="human")
    assert exact(seed_result.total_macs) in exact_text and exact(seed_result.total_params) in exact_text
    assert exact(seed_result.total_macs) not in human_text
    assert f"{seed_result.total_macs / 10**6:.2f}M" in human_text
    assert human_text == seed_result.table()


@pytest.mark.parametrize(
    ("tablefmt", "is_row", "frame"),
    [
        pytest.param("github", lambda line: line.startswith("|"), ("| Layer", None), id="github"),
        pytest.param("grid", lambda line: line.startswith("|"), ("+-", "+-"), id="grid"),
        pytest.param("latex", lambda line: line.endswith("\\\\"), ("\\begin{tabular}", "\\end{tabular}"), id="latex"),
    ],
)
def test_tabulate_formats(seed_result, tablefmt, is_row, frame):
    text = seed_result.table(depth=2, units="exact", tablefmt=tablefmt)
    lines = text.splitlines()
    first, last = frame
    assert lines[0].startswith(first)
    if last:
        assert lines[-1].startswith(last)
    shown = [layer for layer in seed_result.layers if layer.depth <= 2]
    # header, every shown layer, totals
    assert sum(map(is_row, lines)) - (tablefmt == "github") == 1 + len(shown) + 1
    (total,) = [line for line in lines if "Total" in line]
    assert exact(seed_result.total_macs) in total


BAD_OPTIONS = [
    pytest.param({"columns": ("layer", "weights")}, "'weights'", COLUMNS, id="column"),
    pytest.param({"sort_by": "latency"}, "'latency'", SORT_KEYS, id="sort-key"),
    pytest.param({"units": "metric"}, "'metric'", UNITS, id="units"),
]


@pytest.mark.parametrize("render", ["table", "html"])
@pytest.mark.parametrize(("options", "bad", "valid"), BAD_OPTIONS)
def test_bad_options_name_the_value_and_the_valid_ones(seed_result, render, options, bad, valid):
    with pytest.raises(ValueError) as info:
        getattr(seed_result, render)(**options)
    message = str(info.value)
    assert bad in message
    assert all(name in message for name in valid)


@pytest.mark.parametrize("render", ["table", "html"])
@pytest.mark.parametrize(
    "options",
    [{"columns": ("time",)}, {"columns": ("layer", "flops_per_s")}, {"sort_by": "time"}],
    ids=["time-column", "flops-per-s-column", "sort-by-time"],
)
def test_time_needs_measure_time(seed_result, render, options):
    with pytest.raises(ValueError, match=r"measure_time=True"):
        getattr(seed_result, render)(**options)


@pytest.mark.parametrize("render", ["table", "html"])
@pytest.mark.parametrize(("columns", "names"), [("macs", ("macs",)), ("layer, macs,params", ("layer", "macs", "params"))])
def test_columns_as_one_comma_separated_string(seed_result, render, columns, names):
    grid = text_grid if render == "table" else html_grid
    assert grid(seed_result, columns=columns)[0] == [COLUMNS[c] for c in names]


# ---------------------------------------------------------------- exports


def assert_layer_data(result, records: list[dict]) -> None:
    """``records`` (from to_dict, JSON or CSV, already parsed) carry the result's numbers."""
    layers = result.layers
    assert [r["name"] for r in records] == [layer.name for layer in layers]
    for layer, r in zip(layers, records):
        assert r["type"] == layer.type
        assert (r["depth"], r["calls"], r["status"]) == (layer.depth, layer.calls, layer.status)
        assert (r["macs"], r["flops"], r["matmul_flops"]) == (layer.total.macs, layer.total.flops, layer.total.matmul_flops)
        assert (r["own_macs"], r["own_flops"], r["own_matmul_flops"]) == (layer.own.macs, layer.own.flops, layer.own.matmul_flops)
        assert (r["params"], r["own_params"]) == (layer.params, layer.own_params)
        assert r["uncounted"] == layer.uncounted
        assert r["input_shapes"] == [list(s) for s in layer.input_shapes]
        assert r["output_shapes"] == [list(s) for s in layer.output_shapes]
        assert (r["time"], r["own_time"]) == (layer.time, layer.own_time)


def assert_report_data(result, data: dict) -> None:
    assert data["model"] == result.root.type
    assert data["totals"] == {
        "macs": result.total_macs,
        "flops": result.total_flops,
        "matmul_flops": result.matmul_flops,
        "params": result.total_params,
        "time": result.total_time,
        "bytes_read": result.bytes_read,
        "bytes_written": result.bytes_written,
    }
    assert_layer_data(result, data["layers"])
    for layer, record in zip(result.layers, data["layers"]):
        assert record["rule"] == layer.rule
        assert [(f["function"], f["calls"], f["macs"], f["flops"]) for f in record["functions"]] == [
            (f.function, f.calls, f.counts.macs, f.counts.flops) for f in layer.functions
        ]
    assert data["uncounted"] == [
        {"kind": u.kind, "name": u.name, "calls": u.calls, "layers": list(u.layers)} for u in result.uncounted
    ]


RESULTS = ["seed_result", "net_result", "timed_result"]


@pytest.mark.parametrize("which", RESULTS)
def test_to_dict_is_json_and_carries_the_numbers(request, which):
    result = request.getfixturevalue(which)
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert_report_data(result, data)


@pytest.mark.parametrize("which", RESULTS)
def test_to_json_round_trip(request, which, tmp_path):
    result = request.getfixturevalue(which)
    path = tmp_path / "report.json"
    text = result.to_json(path)
    assert_report_data(result, json.loads(text))
    assert path.read_text() == text


def parse_csv(text: str) -> list[dict]:
    ints = ("depth", "calls", "params", "own_params", "macs", "flops", "matmul_flops", "own_macs", "own_flops",
            "own_matmul_flops")
    records = []
    for row in csv.DictReader(io.StringIO(text)):
        record = dict(row)
        record.update({k: int(row[k]) for k in ints})
        record.update({k: json.loads(row[k]) for k in ("input_shapes", "output_shapes")})
        record.update({k: float(row[k]) if row[k] else None for k in ("time", "own_time")})
        record["uncounted"] = {"True": True, "False": False}[row["uncounted"]]
        records.append(record)
    return records


@pytest.mark.parametrize("which", RESULTS)
def test_to_csv_round_trip(request, which, tmp_path):
    result = request.getfixturevalue(which)
    path = tmp_path / "report.csv"
    text = result.to_csv(path)
    assert_layer_data(result, parse_csv(text))
    assert path.read_text() == text


@pytest.mark.parametrize("options", [{}, {"depth": 1, "units": "exact"}, {"sort_by": "flops", "top": 3}])
def test_to_markdown_is_the_github_table(net_result, options):
    assert net_result.to_markdown(**options) == net_result.table(tablefmt="github", **options)


def test_to_dataframe(net_result):
    frame = net_result.to_dataframe()
    assert len(frame) == len(net_result.layers)
    assert list(frame["name"]) == [layer.name for layer in net_result.layers]
    assert list(frame["macs"]) == [layer.total.macs for layer in net_result.layers]
    assert frame["macs"].iloc[0] == net_result.total_macs


def test_to_dataframe_without_pandas(net_result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"to_dataframe\(\) needs pandas: pip install pandas"):
        net_result.to_dataframe()


# ---------------------------------------------------------------- timing


def without_times(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    data["totals"].pop("time")
    for layer in data["layers"]:
        layer.pop("time")
        layer.pop("own_time")
    return data


def test_timing_gives_every_executed_layer_a_time(timed_result):
    for layer in timed_result.layers:
        assert layer.time is not None and layer.own_time is not None
        assert layer.own_time >= 0
        if layer.calls > 0:
            assert layer.time > 0, layer.name
    assert timed_result.total_time == timed_result.root.time > 0


def test_timing_tree_adds_up(timed_result):
    for layer in timed_result.layers:
        assert layer.time >= sum(child.own_time for child in layer.children)
        assert layer.time == pytest.approx(layer.own_time + sum(child.time for child in layer.children))
    assert timed_result.total_time == pytest.approx(sum(layer.own_time for layer in timed_result.layers))


def test_timing_leaves_the_counts_unchanged(seed_result, timed_result):
    assert without_times(timed_result.to_dict()) == without_times(seed_result.to_dict())
    assert_tree_invariant(timed_result.root)
    assert seed_result.total_time is None


@pytest.mark.parametrize("render", ["table", "html"])
def test_time_columns_shown_by_default_when_timed(timed_result, seed_result, render):
    grid = text_grid if render == "table" else html_grid
    header, rows = grid(timed_result)
    assert header[-2:] == [COLUMNS["time"], COLUMNS["flops_per_s"]]
    assert all(row[-2] for row in rows)
    untimed, _ = grid(seed_result)
    assert COLUMNS["time"] not in untimed and COLUMNS["flops_per_s"] not in untimed


@pytest.mark.parametrize("render", ["table", "html"])
def test_sort_by_time(timed_result, render):
    grid = text_grid if render == "table" else html_grid
    header, rows = grid(timed_result, sort_by="time", top=3)
    assert len(rows) == 3 + 1
    values = [layer.own_time for layer in ranked_layers(timed_result, header, rows)]
    assert values == sorted(values, reverse=True)
    assert values[0] == max(layer.own_time for layer in timed_result.layers)


@pytest.mark.parametrize(
    "options",
    [{"repeats": 0}, {"repeats": -1}, {"repeats": 1.5}, {"repeats": True}, {"warmup": -1}, {"warmup": 0.5}],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()),
)
def test_bad_repeats_or_warmup(options):
    ((name, value),) = options.items()
    with pytest.raises(ValueError, match=rf"{name} must be .*{re.escape(repr(value))}"):
        profile(nn.Linear(4, 4), torch.rand(2, 4), measure_time=True, **options)


class Sleep(nn.Module):
    seconds = 0.02

    def forward(self, x):
        time.sleep(self.seconds)
        return x


class Sleepers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Sleep(), Sleep()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_time_inside_a_container_is_not_counted_twice():
    result = profile(Sleepers(), torch.rand(2), measure_time=True, repeats=1, warmup=0)
    slept = [result.layer(f"layers.{i}").time for i in range(2)]
    assert min(slept) >= Sleep.seconds
    # the model's forward only loops: nearly all its time is its children's sleep
    assert result.root.own_time < Sleep.seconds
    assert result.total_time < sum(slept) + Sleep.seconds


# ---------------------------------------------------------------- input_size


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(6, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class Probe(nn.Module):
    """Records the dtype and device of the input it is called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.dtype, torch.device]] = []

    def forward(self, x):
        self.seen.append((x.dtype, x.device))
        return self.inner(x)


def test_input_size_single():
    result = profile(nn.Linear(4, 3), input_size=(2, 4))
    assert result.total_macs == 2 * 4 * 3
    assert result.root.input_shapes == ((2, 4),)


@pytest.mark.parametrize("sizes", [[(3, 4), (3, 6)], ((3, 4), (3, 6)), [torch.Size([3, 4]), [3, 6]]])
def test_input_size_list_for_two_inputs(sizes):
    result = profile(TwoInputs(), input_size=sizes)
    assert result.root.input_shapes == ((3, 4), (3, 6))
    assert result.total_macs == 3 * 4 * 8 + 3 * 6 * 8


def test_input_dtype_long_builds_token_ids():
    probe = Probe(nn.Embedding(10, 4))
    result = profile(probe, input_size=(2, 5), input_dtype=torch.long)
    assert probe.seen[-1] == (torch.long, torch.device("cpu"))
    assert result.root.output_shapes == ((2, 5, 4),)
    assert result.total_params == 10 * 4


def test_input_size_follows_the_models_dtype():
    probe = Probe(nn.Linear(4, 3).double())
    result = profile(probe, input_size=(2, 4))
    assert probe.seen[-1] == (torch.float64, torch.device("cpu"))
    assert result.total_macs == 2 * 4 * 3


def test_input_size_follows_the_models_device():
    with torch.device("meta"):
        probe = Probe(nn.Linear(4, 3))
    result = profile(probe, input_size=(2, 4))
    assert probe.seen[-1] == (torch.float32, torch.device("meta"))
    assert (result.total_macs, result.total_params) == (2 * 4 * 3, 4 * 3 + 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"inputs": (torch.rand(2, 4),), "input_size": (2, 4)}, TypeError, "not both", id="both"),
        pytest.param({}, TypeError, "input_size", id="neither"),
        pytest.param({"inputs": (torch.rand(2, 4),), "input_dtype": torch.float64}, TypeError, "input_dtype",
                     id="dtype-without-size"),
        pytest.param({"input_size": (1, -3)}, ValueError, r"\(1, -3\)", id="negative"),
        pytest.param({"input_size": "abc"}, ValueError, "'abc'", id="string"),
        pytest.param({"input_size": (2, 4.0)}, ValueError, r"4\.0", id="float"),
        pytest.param({"input_size": [(2, 4), 3]}, ValueError, "input_size", id="mixed-list"),
    ],
)
def test_input_size_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        profile(nn.Linear(4, 3), **kwargs)
