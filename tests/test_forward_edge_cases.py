"""Forwards at the edges of what a capture sees: one that skips its layers or leaves them to run
later (a generator over its input) says so, and nested tensors (strided and jagged) are reported
uncounted with their layer and their bytes, never a crash."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from profiler import UncountedError, UncountedWarning, profile, profile_training
from profiler.tree import Uncounted

LINEAR_PARAMS = 4 * 4 + 4


class Holding(nn.Module):
    """A Linear (or another layer), and a forward given as ``forward(self, x)``."""

    def __init__(self, forward, layer: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4) if layer is None else layer
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


NOTHING = "the forward ran no layer and no torch function: nothing was counted"
SKIPPED_LAYERS = f"the forward counted nothing and ran none of the layers holding the model's {LINEAR_PARAMS:,} parameters"
SKIPPED = [  # (forward, the lazy output's type, what the warning says happened: iter(x) is a torch call)
    pytest.param(lambda m, x: (m.layer(t) for t in x), "generator", SKIPPED_LAYERS, id="generator expression over the input"),
    pytest.param(lambda m, x: map(m.layer, x), "map", SKIPPED_LAYERS, id="map over the input"),
    pytest.param(lambda m, x: zip(x, map(m.layer, x)), "zip", SKIPPED_LAYERS, id="zip over the input"),
    pytest.param(lambda m, x: x, "", NOTHING, id="the input untouched"),
    pytest.param(lambda m, x: x[0], "", SKIPPED_LAYERS, id="an index of the input"),
    pytest.param(lambda m, x: x.t(), "", SKIPPED_LAYERS, id="a view of the input"),
    pytest.param(lambda m, x: None, "", NOTHING, id="returns early"),
]


@pytest.mark.parametrize(("forward", "lazy", "what"), SKIPPED)
def test_a_forward_that_runs_none_of_its_layers_says_so(forward, lazy, what):
    model = Holding(forward)
    with pytest.warns(UncountedWarning) as caught:
        result = profile(model, (torch.rand(2, 4),))
    assert result.total_macs == result.total_flops == 0
    message = " ".join(str(w.message) for w in caught)
    assert message.startswith(what)
    if lazy:
        assert f"it returned a {lazy}, whose work runs only when it is consumed" in message
        assert "consume it inside forward" in message
    with pytest.raises(UncountedError, match="strict=True and the forward"):
        profile(model, (torch.rand(2, 4),), strict=True)


@pytest.mark.parametrize("forward", [
    pytest.param(lambda m, x: (m.layer(t) for t in x * 2), id="generator over computed work"),
    pytest.param(lambda m, x: map(m.layer, F.normalize(x)), id="map over computed work"),
    pytest.param(lambda m, x: (m.layer(t) for t in m.layer(x)), id="generator after a layer ran"),
])
def test_a_lazy_output_says_so_when_other_work_was_counted(forward):
    model, x = Holding(forward), torch.rand(2, 4)
    with pytest.warns(UncountedWarning, match="leave out the work of its output; it returned a") as caught:
        result = profile(model, (x,))
    assert "consume it inside forward" in str(caught[0].message)
    consumed = Holding(lambda m, x: tuple(forward(m, x)))
    assert result.total_flops < profile(consumed, (x,)).total_flops  # what the lazy output left out


def test_a_parameter_free_model_returning_a_generator_says_so():
    model = Holding(lambda m, x: (m.layer(t) for t in x), nn.ReLU())
    with pytest.warns(UncountedWarning, match="returned a generator") as caught:
        profile(model, (torch.rand(2, 4),))
    assert "parameters" not in str(caught[0].message)  # it holds none


@pytest.mark.parametrize(("model", "x"), [
    pytest.param(nn.Sequential(nn.ReLU(), nn.Identity(), nn.Flatten()), torch.rand(2, 4), id="parameter-free layers"),
    pytest.param(Holding(lambda m, x: m.layer(x)), torch.rand(2, 4), id="its layer ran"),
    pytest.param(Holding(lambda m, x: iter([m.layer(t) for t in x])), torch.rand(2, 4), id="an iterator over done work"),
    pytest.param(nn.Sequential(nn.Embedding(10, 4)), torch.zeros(2, 3, dtype=torch.long), id="a free layer with parameters"),
    pytest.param(Holding(lambda m, x: F.embedding(x, m.layer.weight), nn.Embedding(10, 4)),
                 torch.zeros(2, 3, dtype=torch.long), id="a free call on a child's parameters"),
])
def test_a_forward_whose_layers_ran_does_not_warn(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile(model, (x,), strict=True)


def test_a_model_gathering_from_its_own_parameter_does_not_warn():
    class Table(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.rand(10, 4))

        def forward(self, ids):
            return self.table[ids]

    ids = torch.tensor([1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = profile(Table(), (ids,))
    assert result.total_flops == 0
    assert result.bytes_read == ids.nbytes + 3 * 4 * 4  # the indices and the rows they select


def test_a_training_step_whose_forward_skipped_its_layers_says_so():
    model = Holding(lambda m, x: x[0])
    with pytest.warns(UncountedWarning, match=f"ran none of the layers holding the model's {LINEAR_PARAMS:,} parameters"):
        profile_training(model, (torch.rand(2, 4),), loss=lambda output: model.layer.weight[0, 0])


LAYOUTS = [pytest.param(torch.strided, id="strided"), pytest.param(torch.jagged, id="jagged")]
SIZES = (2, 3)  # the ragged dimension's size in each component


def nested(layout: torch.layout, *trailing: int) -> torch.Tensor:
    """A nested tensor of components ``(n, *trailing)`` for each n of SIZES."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: the strided layout is a prototype
        return torch.nested.nested_tensor([torch.rand(n, *trailing) for n in SIZES], layout=layout)


def component_bytes(t: torch.Tensor) -> int:
    return sum(c.nbytes for c in t.unbind())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_layer_over_a_nested_tensor_is_uncounted_with_its_shapes_and_bytes(layout):
    x = nested(layout, 4)
    linear = nn.Linear(4, 3)
    with pytest.warns(UncountedWarning, match="not counted: Linear ×1"):
        result = profile(nn.Sequential(linear, nn.ReLU()), (x,))
    with torch.no_grad():
        out = linear(x)
    layer = result.layer("0")
    assert (layer.status, layer.input_shapes, layer.output_shapes) == ("uncounted", ((2, None, 4),), ((2, None, 3),))
    assert layer.bytes_read == component_bytes(x) + linear.weight.nbytes + linear.bias.nbytes
    assert layer.bytes_written == component_bytes(out) == sum(n * 3 for n in SIZES) * 4
    assert result.uncounted == (Uncounted("module", "Linear", 1, ("0",)),)
    assert json.loads(result.to_json())["layers"][1]["input_shapes"] == [[2, None, 4]]
    assert result.table()  # renders


@pytest.mark.parametrize("layout", LAYOUTS)
def test_functions_over_nested_tensors_are_uncounted_in_their_layer_with_bytes(layout):
    class Scores(nn.Module):
        def forward(self, q, k):
            return F.softmax(torch.matmul(q, k), dim=-1)

    q = nested(layout, 4)
    k = torch.rand(4, 5)
    if layout == torch.strided:  # it multiplies nested tensors only
        k = torch.nested.nested_tensor([k, torch.rand(4, 5)])
    with pytest.warns(UncountedWarning, match=r"torch\.matmul \(nested\) ×1; torch\.nn\.functional\.softmax \(nested\) ×1"):
        result = profile(Scores(), (q, k))
    scores = torch.matmul(q, k)
    functions = {f.function: f for f in result.layer("").functions}
    matmul, softmax = functions["torch.matmul (nested)"], functions["torch.nn.functional.softmax (nested)"]
    assert (matmul.status, softmax.status) == ("uncounted", "uncounted")
    k_bytes = component_bytes(k) if k.is_nested else k.nbytes
    assert (matmul.bytes_read, matmul.bytes_written) == (component_bytes(q) + k_bytes, component_bytes(scores))
    assert (softmax.bytes_read, softmax.bytes_written) == (component_bytes(scores),) * 2
    assert result.total_macs == 0
