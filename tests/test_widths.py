"""Tables fit 100 columns by default: the zoo's tree and ranking tables, and every example's output.

Torch functions are shown as users write them (``F.scaled_dot_product_attention``), a ranking says
"(self)" once, and a module returning several tensors shows the first one's shape in the text.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
import transformers

from profiler import profile
from profiler.render import MAX_AUTO_ROWS, MAX_WIDTH, display_name

from conftest import load_example
from test_report import HTMLTable


def gpt2():
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2))
    return profile(model, kwargs={"input_ids": torch.zeros(1, 128, dtype=torch.long)})


def resnet18():
    return profile(torchvision.models.resnet18(weights=None), input_size=(1, 3, 224, 224))


def seed():
    model, x = load_example("transformer_flops").seed_model()
    return profile(model, (x,))


MODELS = {"gpt2": gpt2, "resnet18": resnet18, "seed": seed}


@pytest.fixture(scope="module", params=list(MODELS))
def result(request):
    torch.manual_seed(0)
    return MODELS[request.param]()


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_the_budget_is_the_issues():
    assert MAX_WIDTH == 100


TABLES = [
    pytest.param({}, id="default"),
    pytest.param({"depth": 1}, id="depth-1"),
    pytest.param({"depth": 2}, id="depth-2"),
    pytest.param({"sort_by": "macs", "top": 10}, id="sort-macs-top-10"),
    pytest.param({"sort_by": "flops", "top": 10, "depth": 2}, id="sort-flops-top-10-depth-2"),
    pytest.param({"sort_by": "params", "top": 10, "depth": 3}, id="sort-params-top-10-depth-3"),
]


@pytest.mark.parametrize("options", TABLES)
def test_tables_fit_100_columns(result, options):
    text = result.table(**options)
    assert widest(text) <= MAX_WIDTH, "\n" + text


def table_rows(text: str) -> int:
    """Rows of a "simple" table: its lines before the notes, less the header, the rule and Total."""
    return len(text.split("\n\n")[0].splitlines()) - 3


def table_part(text: str) -> str:
    return text.split("\n\n")[0]


def test_default_depth_is_the_deepest_that_fits(result):
    deepest = max(layer.depth for layer in result.layers)
    by_rows = [d for d in range(1, deepest + 1) if table_rows(result.table(depth=d)) <= MAX_AUTO_ROWS]
    fits = [d for d in by_rows if widest(result.table(depth=d)) <= MAX_WIDTH]
    chosen = max(fits, default=1)
    assert table_part(result.table()) == table_part(result.table(depth=chosen))
    note = f"Deeper levels are left out to fit {MAX_WIDTH} columns; depth={max(by_rows, default=1)} shows them."
    assert (note in result.table()) == (max(by_rows, default=1) > chosen)


def test_gpt2_full_tree_is_too_wide_so_the_default_is_shallower():
    result = gpt2()
    deepest = max(layer.depth for layer in result.layers)
    full = result.table(depth=deepest)
    assert table_rows(full) <= MAX_AUTO_ROWS and widest(full) > MAX_WIDTH  # the width, not the rows, decides
    assert table_part(result.table()) == table_part(result.table(depth=deepest - 1))
    for text in (result.table(), result.html()):
        assert f"depth={deepest} shows them" in text


def test_ranking_says_self_once_and_keeps_plain_headers():
    result = gpt2()
    text = result.table(sort_by="macs", top=10)
    assert text.count("(self)") == 1
    assert text.splitlines()[0].split() == ["Layer", "Type", "Output", "shape", "Params", "MACs", "FLOPs", "MACs", "%"]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("torch.nn.functional.scaled_dot_product_attention", "F.scaled_dot_product_attention"),
        ("torch.Tensor.baddbmm", "Tensor.baddbmm"),
        ("torch.matmul", "torch.matmul"),
        ("torch.fft.fft", "torch.fft.fft"),
        ("aten.addmm", "aten.addmm"),
        ("Linear", "Linear"),
    ],
)
def test_display_name(name, shown):
    assert display_name(name) == shown


def test_function_names_are_short_in_tables_and_full_in_records():
    result = gpt2()
    sdpa = "torch.nn.functional.scaled_dot_product_attention"
    assert sdpa in [f.function for f in result.layer("transformer.h.0.attn").functions]
    deepest = max(layer.depth for layer in result.layers)
    for text in (result.table(depth=deepest), result.html(depth=deepest)):
        assert "F.scaled_dot_product_attention" in text and "torch.nn.functional." not in text
        assert "Tensor.add" in text and "torch.Tensor." not in text
    assert any(layer["functions"] and layer["functions"][0]["function"].startswith("torch.")
               for layer in result.to_dict()["layers"])


def test_several_outputs_show_the_first_shape_and_all_in_the_html_title():
    result = seed()
    attention = result.layer("layers.0.attention")
    first, *more = attention.output_shapes
    assert more  # MultiheadAttention returns the output and the attention weights
    line = next(line for line in result.table().splitlines() if "attention" in line)
    assert f"{list(first)}, …" in line and str(list(more[0])) not in line
    html = result.html()
    everything = ", ".join(str(list(s)) for s in attention.output_shapes)
    assert f'title="{everything}"' in html
    assert HTMLTable(html).errors == []


EXAMPLES = ["transformer_flops", "torchvision_models", "huggingface", "custom_rule", "llm_on_meta"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_print_within_100_columns(name, capsys):
    load_example(name).main()
    out = capsys.readouterr().out
    assert widest(out) <= MAX_WIDTH, "\n".join(line for line in out.splitlines() if len(line) > MAX_WIDTH)
