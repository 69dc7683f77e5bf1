"""``compare_with_thop``: every layer whose MACs differ from thop's, with the reason, against thop itself."""

from __future__ import annotations

import copy
import sys

import pytest
import thop
import torch
import torchvision
from torch import nn

from profiler import compare_with_thop, profile

from conftest import load_example


def thop_counts(model: nn.Module, args: tuple) -> tuple[float, float]:
    return thop.profile(copy.deepcopy(model), inputs=args, verbose=False)


def snapshot(model: nn.Module) -> dict:
    return {
        "buffers": [name for name, _ in model.named_buffers()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert not any("total_ops" in name or "total_params" in name for name in after["buffers"])
    assert after["buffers"] == before["buffers"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], before["state"][k]) for k in before["state"])


def assert_rows_explain_the_totals(comparison) -> None:
    """Each row is one layer's own MACs, so the rows' differences add up to the totals' difference."""
    assert sum(row.ours for row in comparison.rows) == comparison.macs
    assert sum(row.thop for row in comparison.rows) == comparison.thop_macs
    assert sum(row.difference for row in comparison.differences) == comparison.macs - comparison.thop_macs
    for row in comparison.rows:
        assert bool(row.reason) == bool(row.difference), row
        assert row.reason != "unexplained", row


@pytest.fixture(scope="module")
def seed_comparison():
    model, x = load_example("transformer_flops").seed_model()
    model.train()
    before = snapshot(model)
    comparison = compare_with_thop(model, inputs=(x,))
    return model, x, before, comparison


def test_seed_model_totals_are_thops_and_ours(seed_comparison):
    model, x, _, comparison = seed_comparison
    thop_macs, thop_params = thop_counts(model, (x,))
    ours = profile(model, inputs=(x,))
    assert (comparison.thop_macs, comparison.thop_params) == (thop_macs, thop_params)
    assert (comparison.macs, comparison.params) == (ours.total_macs, ours.total_params)
    assert comparison.params == sum(p.numel() for p in model.parameters())


def test_seed_model_differences_are_the_attention_layers(seed_comparison):
    model, _, _, comparison = seed_comparison
    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert [row.name for row in comparison.differences] == attention
    for row in comparison.differences:
        assert row.thop == 0
        assert "no rule for MultiheadAttention" in row.reason
    assert_rows_explain_the_totals(comparison)


def test_seed_model_unchanged(seed_comparison):
    model, _, before, _ = seed_comparison
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


def test_table_lists_the_differences_and_totals(seed_comparison):
    _, _, _, comparison = seed_comparison
    text = comparison.table()
    table, notes = text.split("\n\n")
    reasons = dict(line.split(" ", 1) for line in notes.splitlines())  # "[1] thop has no rule for..."
    for row in comparison.differences:
        line = next(line for line in table.splitlines() if line.startswith(row.name + " "))
        assert f"{row.difference:,}" in line and reasons[line.split()[-1]] == row.reason
    assert f"{comparison.macs:,}" in table and f"{comparison.thop_macs:,}" in table
    assert max(len(line) for line in text.splitlines()) <= 100
    full_table = comparison.table(all_layers=True).split("\n\n")[0]
    assert len(full_table.splitlines()) == 2 + len(comparison.rows) + 2


def test_resnet18_agrees_with_thop():
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    comparison = compare_with_thop(model, input_size=(1, 3, 64, 64))
    assert comparison.differences == ()
    assert comparison.macs == comparison.thop_macs
    assert comparison.params == comparison.thop_params == sum(p.numel() for p in model.parameters())
    assert_rows_explain_the_totals(comparison)
    assert_unchanged(model, before)


class SubLinear(nn.Linear):
    pass


class MatmulInForward(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(n, n))

    def forward(self, x):
        return x @ self.w


class Mixed(nn.Module):
    """A Linear subclass, a matmul in forward, a ConvTranspose2d and an AvgPool2d: four thop differences."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = SubLinear(8, 8)
        self.mm = MatmulInForward(8)
        self.up = nn.ConvTranspose2d(2, 2, kernel_size=2, stride=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(self.mm(self.sub(x)))
        return self.pool(self.up(y.reshape(1, 2, 4, 8)))


# x [8, 8]; up: [1, 2, 4, 8] -> [1, 2, 8, 16], k 2x2; pool: [1, 2, 8, 16] -> [1, 2, 4, 8]
MIXED_ROWS = {
    # name: (our MACs, thop's MACs, words in the reason)
    "sub": (8 * 8 * 8, 0, ("subclass of Linear", "SubLinear")),
    "mm": (8 * 8 * 8, 0, ("torch functions", "matmul")),
    "up": (1 * 2 * 4 * 8 * 2 * 2 * 2, 1 * 2 * 8 * 16 * 2 * 2 * 2, ("output size",)),
    "pool": (2 * 4 * 8 * (2 * 2 + 1), 2 * 4 * 8, ("window",)),
}


def test_each_difference_has_its_reason():
    torch.manual_seed(0)
    model = Mixed().train()
    x = torch.rand(8, 8)
    before = snapshot(model)
    comparison = compare_with_thop(model, inputs=(x,))
    assert {row.name for row in comparison.differences} == set(MIXED_ROWS)
    for row in comparison.differences:
        ours, theirs, words = MIXED_ROWS[row.name]
        assert (row.ours, row.thop) == (ours, theirs)
        assert all(word in row.reason for word in words), row.reason
    fc = next(row for row in comparison.rows if row.name == "fc")
    assert (fc.ours, fc.thop, fc.reason) == (8 * 8 * 8, 8 * 8 * 8, "")
    assert (comparison.thop_macs, comparison.thop_params) == thop_counts(model, (x,))
    assert_rows_explain_the_totals(comparison)
    assert_unchanged(model, before)


def test_input_size_is_accepted():
    comparison = compare_with_thop(nn.Sequential(nn.Linear(4, 3)), input_size=(2, 4))
    assert (comparison.macs, comparison.thop_macs) == (2 * 4 * 3, 2 * 4 * 3)


def test_without_thop(monkeypatch):
    monkeypatch.setitem(sys.modules, "thop", None)
    with pytest.raises(ImportError, match=r"compare_with_thop\(\) needs thop: pip install thop"):
        compare_with_thop(nn.Linear(4, 3), input_size=(2, 4))
