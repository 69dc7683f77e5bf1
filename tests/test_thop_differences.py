"""Each deliberate difference from thop 0.1.1 that the README lists: thop's number and the truth.

Every case runs thop itself, so the README's thop column is checked too.
"""

from __future__ import annotations

import copy

import pytest
import thop
import torch
from torch import nn

from profiler import profile

from conftest import load_example


def thop_counts(model: nn.Module, x) -> tuple[float, float]:
    return thop.profile(copy.deepcopy(model), inputs=x if isinstance(x, tuple) else (x,), verbose=False)


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16)

    def forward(self, x):
        return self.lstm(nn.utils.rnn.pack_padded_sequence(x, [10, 2, 2, 2]))[1][0]


class SubLinear(nn.Linear):
    pass


class LoRALinear(nn.Linear):
    """A subclass whose forward does more than its base: a rank-4 update, loralib's pattern."""

    def __init__(self, n_in: int, n_out: int, rank: int = 4) -> None:
        super().__init__(n_in, n_out)
        self.A = nn.Parameter(torch.rand(rank, n_in))
        self.B = nn.Parameter(torch.rand(n_out, rank))

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias) + x @ self.A.T @ self.B.T


class MatmulInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(64, 64))

    def forward(self, x):
        return x @ self.w


class SharedParents(nn.Module):
    """One Linear registered under two parents; only one of them runs it."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(64, 64)
        self.a = nn.Sequential(shared)
        self.b = nn.Sequential(shared)

    def forward(self, x):
        return self.a(x)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.gamma = nn.Parameter(torch.ones(64))

    def forward(self, x):
        return self.fc(x) * self.gamma


# lstm_cell(in, H, proj P): matmul 4H(in + P) + P*H, elementwise 4H + 8H (bias) + 3H + H
LSTM_PROJ_CELL = 4 * 64 * (32 + 16) + 16 * 64 + (4 * 64 + 8 * 64 + 3 * 64 + 64)
LSTM_PROJ_THOP_CELL = 4 * ((32 + 64) * 64 + 64 + 2 * 64) + 3 * 64 + 64
LSTM_CELL = 4 * 16 * (8 + 16) + (4 * 16 + 8 * 16 + 3 * 16 + 16)
GRU_CELL = 3 * 16 * (8 + 16) + (3 * 16 + 6 * 16 + 16 + 3 * 16)

CASES = [
    # (id, model, input, our MACs, thop's MACs, our params, thop's params)
    pytest.param(nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), torch.rand(1, 64, 16, 16),
                 1 * 64 * 16 * 16 * 32 * 4 * 4, 1 * 32 * 32 * 32 * 64 * 4 * 4,
                 64 * 32 * 16 + 32, 0, id="conv-transpose-uses-output-size"),
    pytest.param(nn.Sequential(nn.Conv2d(3, 8, 3)), torch.rand(3, 32, 32),
                 8 * 30 * 30 * 3 * 3 * 3, 8 * 30 * 30 * 32 * 3 * 3,
                 8 * 3 * 3 * 3 + 8, 8 * 3 * 3 * 3 + 8, id="unbatched-conv-reads-height-as-channels"),
    pytest.param(nn.Sequential(nn.AvgPool2d(2)), torch.rand(1, 64, 56, 56),
                 64 * 28 * 28 * (2 * 2 + 1), 64 * 28 * 28, 0, 0, id="avgpool-ignores-window"),
    pytest.param(nn.Sequential(nn.AdaptiveAvgPool2d(3)), torch.rand(1, 8, 7, 7),
                 # windows [0,3) [2,5) [4,7) per dimension: 3 + 3 + 3 rows and columns
                 8 * (3 + 3 + 3) * (3 + 3 + 3) + 8 * 3 * 3, int(((7 / 3) * (7 / 3) + 1) * 8 * 3 * 3),
                 0, 0, id="adaptive-avgpool-float-kernel"),
    pytest.param(nn.Sequential(nn.LSTM(32, 64, proj_size=16)), torch.rand(10, 4, 32),
                 10 * 4 * LSTM_PROJ_CELL, 10 * 4 * LSTM_PROJ_THOP_CELL,
                 4 * 64 * (32 + 16) + 2 * 4 * 64 + 16 * 64, 4 * 64 * (32 + 16) + 2 * 4 * 64 + 16 * 64,
                 id="lstm-proj-size-ignored"),
    pytest.param(Packed(), torch.rand(10, 4, 8),
                 # lengths 10, 2, 2, 2: 4 sequences for 2 steps, then 1 for 8 steps
                 (4 * 2 + 1 * 8) * LSTM_CELL, 4 * 10 * LSTM_CELL,
                 4 * 16 * (8 + 16) + 2 * 4 * 16, 4 * 16 * (8 + 16) + 2 * 4 * 16, id="packed-sequence-padded-steps"),
    pytest.param(nn.Sequential(nn.GRU(8, 16)), torch.rand(10, 8),
                 10 * GRU_CELL, 10 * 8 * GRU_CELL,
                 3 * 16 * (8 + 16) + 2 * 3 * 16, 3 * 16 * (8 + 16) + 2 * 3 * 16, id="unbatched-rnn-reads-features-as-batch"),
    pytest.param(nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear")), torch.rand(1, 2, 4, 4, 4),
                 2 * 8 * 8 * 8 * (13 * 2 + 5), 0, 0, 0, id="trilinear-upsample-zero"),
    pytest.param(nn.Sequential(SubLinear(64, 64)), torch.rand(8, 64),
                 8 * 64 * 64, 0, 64 * 64 + 64, 0, id="subclass-of-known-layer-zero"),
    pytest.param(nn.Sequential(LoRALinear(64, 32)), torch.rand(8, 64),
                 8 * 64 * 32 + 8 * 64 * 4 + 8 * 4 * 32, 0, 64 * 32 + 32 + 4 * 64 + 32 * 4, 0, id="lora-subclass-traced"),
    pytest.param(MatmulInForward(), torch.rand(8, 64), 8 * 64 * 64, 0, 64 * 64, 0, id="matmul-in-forward-zero"),
    pytest.param(SharedParents(), torch.rand(8, 64),
                 8 * 64 * 64, 4 * 8 * 64 * 64, 64 * 64 + 64, 2 * (64 * 64 + 64), id="shared-module-counted-per-parent"),
    pytest.param(LayerScale(), torch.rand(8, 64), 8 * 64 * 64, 8 * 64 * 64,
                 64 * 64 + 64 + 64, 64 * 64 + 64, id="params-of-modules-without-rule-missed"),
    pytest.param(nn.Linear(64, 64), torch.rand(8, 64), 8 * 64 * 64, 8 * 64 * 64,
                 64 * 64 + 64, 0, id="root-layer-params-zero"),
]


@pytest.mark.parametrize(("model", "x", "macs", "thop_macs", "params", "thop_params"), CASES)
def test_difference_from_thop(model, x, macs, thop_macs, params, thop_params):
    assert thop_counts(model, x) == (thop_macs, thop_params)
    result = profile(model, x)
    assert (result.total_macs, result.total_params) == (macs, params)
    assert result.total_params == sum(p.numel() for p in model.parameters())


def test_seed_model_attention():
    model, x = load_example("transformer_flops").seed_model()
    # per block: q, k, v and out projections 4 * L*N*E*E, scores and weighted sum 2 * N*L*L*E,
    # the MLP 2 * L*N*E*2E; thop sees the MLP only
    L, N, E = 10, 32, 64
    block = 4 * L * N * E * E + 2 * N * L * L * E + 2 * L * N * E * 2 * E
    mlp_params = (E * 2 * E + 2 * E) + (2 * E * E + E)
    attention_params = 3 * E * E + 3 * E + E * E + E
    assert thop_counts(model, x) == (2 * 2 * L * N * E * 2 * E, 2 * mlp_params)
    result = profile(model, x)
    assert (result.total_macs, result.total_params) == (2 * block, 2 * (mlp_params + attention_params))
    assert (2 * block, 2 * (mlp_params + attention_params)) == (21_790_720, 66_432)
    assert result.matmul_flops == 2 * 21_790_720 == 43_581_440
