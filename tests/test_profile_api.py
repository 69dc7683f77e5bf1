"""profile()'s thop-compatible surface: return values, inputs, custom_ops, params, messages."""

from __future__ import annotations

import copy
import warnings

import pytest
import thop
import torch
import torchvision
from torch import nn

from hooks import REGISTRY, Counts
from profiler import UncountedWarning, clever_format, profile


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x, scale=1.0):
        return self.b(self.a(x)) * scale


def test_unpacks_like_thop():
    macs, params = profile(TwoLinear(), inputs=(torch.rand(3, 8),))
    assert macs == 3 * 8 * 16 + 3 * 16 * 4
    assert params == (8 * 16 + 16) + (16 * 4 + 4)


def test_ret_layer_info_has_thops_nested_shape():
    macs, params, info = profile(TwoLinear(), inputs=(torch.rand(3, 8),), ret_layer_info=True)
    assert info == {
        "a": (3 * 8 * 16, 8 * 16 + 16, {}),
        "b": (3 * 16 * 4, 16 * 4 + 4, {}),
    }


def test_layer_info_keys_match_thop_on_resnet18():
    model = torchvision.models.resnet18(weights=None)
    x = torch.rand(1, 3, 64, 64)
    ours = profile(model, inputs=(x,), ret_layer_info=True)[2]
    theirs = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False, ret_layer_info=True)[2]

    def keys(info):
        return {name: keys(children) for name, (_, _, children) in info.items()}

    assert keys(ours) == keys(theirs)


def test_a_lone_tensor_is_one_argument():
    # thop would call model(*x) and unpack the tensor along its first dimension
    x = torch.rand(3, 8)
    assert profile(TwoLinear(), x)[0] == profile(TwoLinear(), (x,))[0] == 3 * 8 * 16 + 3 * 16 * 4


def test_kwargs_reach_forward():
    result = profile(TwoLinear(), inputs=(torch.rand(3, 8),), kwargs={"scale": torch.tensor(2.0)})
    # the scaling multiply is elementwise: 1 FLOP per output element, 0 MACs
    assert result.total_macs == 3 * 8 * 16 + 3 * 16 * 4
    assert result.total_flops == 2 * (3 * 8 * 16 + 3 * 16 * 4) + 3 * 4


def test_result_carries_the_report():
    result = profile(TwoLinear(), inputs=(torch.rand(3, 8),))
    assert result.total_macs == result[0]
    assert result.total_params == result[1]
    assert result.total_flops == 2 * (3 * 8 * 16 + 3 * 16 * 4) + 3 * 4
    assert result.matmul_flops == 2 * (3 * 8 * 16 + 3 * 16 * 4)
    assert [layer.name for layer in result.layers] == ["", "a", "b"]
    assert result.layer("a").total == Counts.matmul(3 * 8 * 16)
    with pytest.raises(KeyError, match="'c'"):
        result.layer("c")


def test_repr_is_short():
    text = repr(profile(TwoLinear(), inputs=(torch.rand(3, 8),)))
    assert text == f"ProfileResult(macs={3 * 8 * 16 + 3 * 16 * 4:,}, flops={2 * (3 * 8 * 16 + 3 * 16 * 4) + 3 * 4:,}, params={(8 * 16 + 16) + (16 * 4 + 4):,})"
    assert "\n" not in str(profile(TwoLinear(), inputs=(torch.rand(3, 8),)))


@pytest.mark.parametrize(
    "values",
    [
        [0, 999, 1000, 1001, 1e6, 1e6 + 1, 1e9 + 1, 1e12 + 1, 5e15],
        [123456789],
        1234.5,
    ],
)
def test_clever_format_is_thops(values):
    assert clever_format(values) == thop.clever_format(values)
    assert clever_format(values, "%.3f") == thop.clever_format(values, "%.3f")


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.weight


def thop_style_rule(m, x, y):
    m.total_ops += torch.DoubleTensor([int(y.numel())])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param(thop_style_rule, Counts.matmul(2 * 4), id="thop-style-total_ops"),
        pytest.param(lambda m, x, y: 7, Counts.matmul(7), id="returns-macs"),
        pytest.param(lambda m, x, y: Counts(macs=1, flops=3), Counts(macs=1, flops=3), id="returns-counts"),
    ],
)
def test_custom_ops(rule, expected):
    model = nn.Sequential(Scale())
    before = dict(vars(model[0]))
    result = profile(model, inputs=(torch.rand(2, 4),), custom_ops={Scale: rule})
    assert result.layer("0").total == expected
    assert vars(model[0]).keys() == before.keys()
    assert Scale not in REGISTRY.module_rules


def test_thop_style_rule_gives_thops_number():
    model = nn.Sequential(Scale())
    x = torch.rand(2, 4)
    ours = profile(model, inputs=(x,), custom_ops={Scale: thop_style_rule})[0]
    theirs = thop.profile(copy.deepcopy(model), inputs=(x,), custom_ops={Scale: thop_style_rule}, verbose=False)[0]
    assert ours == theirs == 2 * 4


def test_custom_op_on_a_composite_covers_its_subtree():
    model = nn.Sequential(TwoLinear())
    result = profile(model, inputs=(torch.rand(3, 8),), custom_ops={TwoLinear: lambda m, x, y: 5})
    assert result.total_macs == 5
    assert result.layer("0").children == ()
    assert result.total_params == (8 * 16 + 16) + (16 * 4 + 4)


def test_custom_ops_override_a_builtin_rule_for_this_call_only():
    x = torch.rand(3, 8)
    assert profile(nn.Linear(8, 2), x, custom_ops={nn.Linear: lambda m, i, o: 1})[0] == 1
    assert profile(nn.Linear(8, 2), x)[0] == 3 * 8 * 2


def test_params_count_every_parameter_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, Scale())
    model.tied = nn.Linear(4, 4, bias=False)
    model.tied.weight = shared.weight
    result = profile(model, inputs=(torch.rand(1, 4),))
    assert result.total_params == sum(p.numel() for p in model.parameters()) == (4 * 4 + 4) + 4
    # the shared Linear runs twice, once under each of its names; Sequential runs the tied one last
    assert result.layer("0").calls == result.layer("2").calls == 1
    assert result.layer("tied").own_params == 0
    assert result.total_macs == 3 * (1 * 4 * 4)


class Opaque(nn.Module):
    """A leaf with no rule that calls no torch function: its work is invisible."""

    def forward(self, x):
        return [0.5] * 4


class Spectrum(nn.Module):
    """A leaf with no rule calling a floating-point operator that has no rule either."""

    def forward(self, x):
        return torch.ops.aten._fft_r2c(x, [1], 0, True)


def test_uncounted_leaf_is_reported(capsys):
    model = nn.ModuleDict({"a": Opaque(), "b": Opaque()})
    model.forward = lambda x: (model.a(x), model.b(x))
    with pytest.warns(UncountedWarning, match="Opaque ×2"):
        result = profile(model, inputs=(torch.rand(2, 4),), report_missing=True)
    assert [(u.kind, u.name, u.calls, u.layers) for u in result.uncounted] == [("module", "Opaque", 2, ("a", "b"))]
    assert result.layer("a").status == "uncounted"
    assert "no rule for module Opaque" in capsys.readouterr().out
    row = next(line for line in result.table().splitlines() if "Opaque" in line)
    assert row.count("uncounted") == 2


def test_uncounted_function_is_reported_in_its_layer():
    model = nn.Sequential(nn.Linear(4, 4), Spectrum())
    with pytest.warns(UncountedWarning, match="aten._fft_r2c ×1"):
        result = profile(model, inputs=(torch.rand(2, 4),))
    assert [(u.kind, u.name, u.calls, u.layers) for u in result.uncounted] == [("function", "aten._fft_r2c", 1, ("1",))]
    assert result.layer("1").uncounted
    row = next(line for line in result.table().splitlines() if "Spectrum" in line)
    assert row.count("uncounted") == 2


def test_verbose_names_the_rules(capsys):
    profile(TwoLinear(), inputs=(torch.rand(3, 8),), verbose=True)
    assert "linear_counts() counts Linear" in capsys.readouterr().out


def test_no_warning_when_everything_is_counted():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile(TwoLinear(), inputs=(torch.rand(3, 8),))
