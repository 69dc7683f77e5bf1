"""Every value a rule returns goes through one check: non-negative integers (numpy's too) or
floats with a whole value, ``flops >= matmul_flops``; anything else is a RuleError naming the
rule, the layer and the value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hooks import Counts, Registry, RuleError, capture_forward
from profiler import profile

X = torch.rand(2, 4)
LINEAR = 2 * 4 * 4  # Linear(4, 4) on 2 rows


def constant(value):
    def rule(module, inputs, output):
        return value

    return rule


@pytest.mark.parametrize(("value", "message"), [
    pytest.param(Counts(-5, -10, -10), "macs is -5, below 0", id="negative"),
    pytest.param(Counts(1, float("nan"), 0), "flops is nan, not a whole number", id="nan"),
    pytest.param(Counts(1, float("inf"), 0), "flops is inf, not a whole number", id="inf"),
    pytest.param(Counts(1, 2.5, 0), "flops is 2.5, not a whole number", id="fraction"),
    pytest.param(Counts(1, 2, 4), "flops 2 are fewer than matmul_flops 4", id="flops below matmul"),
    pytest.param(Counts("1", 2, 2), "macs is '1' (str), not a number", id="string"),
    pytest.param(Counts(True, 2, 2), "macs is True (bool), not a number", id="bool"),
    pytest.param(np.float64(2.5), "MACs is np.float64(2.5), not a whole number", id="numpy fraction"),
    pytest.param(-1.0, "the rule returned -1.0: MACs is -1, below 0", id="negative float"),
    pytest.param("12", "the rule returned str", id="a string"),
])
def test_bad_rule_values_are_refused_naming_rule_layer_and_value(value, message):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(RuleError) as info:
        profile(model, X, custom_ops={nn.Linear: constant(value)})
    text = str(info.value)
    assert "rule constant.<locals>.rule failed on layer '0' (Linear)" in text
    assert message in text


@pytest.mark.parametrize("value", [
    pytest.param(np.int64(LINEAR), id="numpy int"),
    pytest.param(np.float64(LINEAR), id="numpy whole float"),
    pytest.param(float(LINEAR), id="whole float"),
    pytest.param(torch.tensor([float(LINEAR)], dtype=torch.float64), id="thop's tensor"),
    pytest.param(Counts(np.int32(LINEAR), float(2 * LINEAR), np.uint8(0) + 2 * LINEAR), id="counts of mixed numbers"),
])
def test_good_rule_values_become_python_ints(value):
    result = profile(nn.Sequential(nn.Linear(4, 4)), X, custom_ops={nn.Linear: constant(value)})
    assert (result.total_macs, result.total_flops, result.matmul_flops) == (LINEAR, 2 * LINEAR, 2 * LINEAR)
    assert all(type(v) is int for v in (result.total_macs, result.total_flops, result.matmul_flops))
    json.loads(result.to_json())  # plain JSON: no NaN, no floats where ints belong


def negative_counts(args, kwargs, out) -> Counts:
    return Counts(-1, 0, 0)


def test_function_rules_are_checked_too():
    registry = Registry()
    registry.function_rule(torch.special.i1)(negative_counts)

    class Calls(nn.Module):
        def forward(self, x):
            return torch.special.i1(x)

    model = Calls()
    with pytest.raises(RuleError, match=r"rule negative_counts failed on torch\.special\.i1 in the model .*macs is -1, below 0"):
        capture_forward(model, lambda: model(X), registry.resolver())
