"""A forward that fails only in a timing pass is reported like one that fails while counting, and a
forward that runs nothing is not a silent 0."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from profiler import CaptureError, UncountedError, UncountedWarning, profile

from conftest import assert_unchanged, snapshot


class FailsOnCall(nn.Module):
    """Raises on its ``fail_on``-th call: the counting pass is call 1, then warm-up, then timed passes."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise ValueError("flaky")
        return x


@pytest.mark.parametrize(("fail_on", "pass_name"), [
    pytest.param(1 + 1, "warm-up pass 1", id="warm-up"),
    pytest.param(1 + 1 + 2, "timed pass 2", id="timed"),
])
def test_a_forward_failing_in_a_timing_pass_names_the_layer(fail_on, pass_name):
    model = nn.Sequential(nn.Linear(4, 4), FailsOnCall(fail_on))
    before = snapshot(model)
    with pytest.raises(CaptureError) as info:
        profile(model, (torch.rand(2, 4),), measure_time=True, warmup=1, repeats=3)
    assert str(info.value) == (f"the model's forward raised ValueError in the {pass_name} of measure_time=True "
                               "while running layer '1' (FailsOnCall) with input shapes [(2, 4)]: flaky")
    assert isinstance(info.value.__cause__, ValueError)
    assert_unchanged(model, before)


class Lazy(nn.Module):
    """A forward that returns a generator: its body runs only when someone iterates it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        yield self.fc(x)


class Nothing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return None


@pytest.mark.parametrize("model", [Lazy(), Nothing()], ids=["generator", "returns None"])
def test_a_forward_that_runs_nothing_says_so(model):
    with pytest.warns(UncountedWarning, match=r"the forward ran no layer and no torch function"):
        result = profile(model, (torch.rand(2, 4),))
    assert result.total_macs == 0
    with pytest.raises(UncountedError, match="the forward ran no layer"):
        profile(model, (torch.rand(2, 4),), strict=True)


def test_a_forward_doing_only_free_work_is_not_nothing():
    class Reshape(nn.Module):
        def forward(self, x):
            return x.reshape(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert profile(Reshape(), (torch.rand(2, 4),)).total_flops == 0
