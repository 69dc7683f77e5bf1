"""Recurrent layers, with thop's MACs: each gate's matmuls plus thop's count of the bias adds and
elementwise gate arithmetic, per cell step. FLOPs are 2 per matmul MAC plus 1 per elementwise
operation, so ``flops - matmul_flops`` is exactly thop's elementwise part.

Unlike thop, packed sequences count the steps that run (the sum of ``batch_sizes``, not the
longest sequence times the largest batch), ``proj_size`` shrinks the recurrent matmul and adds the
projection, and unbatched input counts one sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from hooks.counts import Counts
from hooks.registry import function_rule, module_rule
from hooks.rules.common import arg

__all__ = ["rnn_cell_ops", "gru_cell_ops", "lstm_cell_ops", "mkldnn_rnn_layer_counts"]


CellOps = Callable[[int, int, bool, int], tuple[int, int]]


def rnn_cell_ops(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> tuple[int, int]:
    """(matmul MACs, elementwise ops) of one step; h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    h = hidden_size
    return h * (input_size + h), h + (2 * h if bias else 0)


def gru_cell_ops(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> tuple[int, int]:
    """One step of the r, z, n gates: 3 matmuls of [H, in + H]."""
    h = hidden_size
    # r, z, n: one add each plus 2 bias adds each; r * (W_hn h); h' = (1 - z) * n + z * h
    return 3 * h * (input_size + h), 3 * h + (6 * h if bias else 0) + h + 3 * h


def lstm_cell_ops(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> tuple[int, int]:
    """One step of the i, f, g, o gates on [x, h] (h has proj_size when set), and the projection."""
    h = hidden_size
    recurrent = proj_size or h
    matmul = 4 * h * (input_size + recurrent) + proj_size * h
    # 4 gates: one add each plus 2 bias adds each; c' = f * c + i * g; h' = o * tanh(c')
    return matmul, 4 * h + (8 * h if bias else 0) + 3 * h + h


def _counts(matmul: int, elementwise: int, steps: int) -> Counts:
    # macs, flops, matmul_flops
    return Counts((matmul + elementwise) * steps, (2 * matmul + elementwise) * steps, 2 * matmul * steps)


def _cell_rule(name: str, cell_ops: CellOps) -> Callable[[nn.Module, tuple, object], Counts]:
    def rule(module: nn.Module, inputs: tuple, output) -> Counts:
        # [B, H] = cell([B, in]), or unbatched [H] = cell([in])
        x = inputs[0]
        batch = x.shape[0] if x.dim() == 2 else 1
        return _counts(*cell_ops(module.input_size, module.hidden_size, module.bias, 0), steps=batch)

    rule.__name__ = rule.__qualname__ = name
    return rule


def _cell_steps(x: Tensor | PackedSequence) -> int:
    """Number of (sequence, time step) pairs that one direction of one layer runs."""
    if isinstance(x, PackedSequence):
        return int(x.batch_sizes.sum())
    if x.dim() == 2:  # unbatched [T, in]
        return x.shape[0]
    return x.shape[0] * x.shape[1]


def _sequence_rule(name: str, cell_ops: CellOps) -> Callable[[nn.Module, tuple, object], Counts]:
    def rule(module: nn.Module, inputs: tuple, output) -> Counts:
        # [T, B, D * H_out] = rnn([T, B, in]); batch_first swaps T and B; D = 2 if bidirectional
        directions = 2 if module.bidirectional else 1
        proj = getattr(module, "proj_size", 0)
        h_out = proj or module.hidden_size
        matmul = elementwise = 0
        for layer in range(module.num_layers):
            layer_input = module.input_size if layer == 0 else h_out * directions
            m, e = cell_ops(layer_input, module.hidden_size, module.bias, proj)
            matmul += m * directions
            elementwise += e * directions
        return _counts(matmul, elementwise, _cell_steps(inputs[0]))

    rule.__name__ = rule.__qualname__ = name
    return rule


_CELL_THOP = "thop reads the batch from dim 0, which is wrong for unbatched input"
_SEQUENCE_THOP = (
    "thop ignores proj_size, counts packed sequences at the longest length and largest batch, "
    "and reads features as batch for unbatched input"
)
module_rule(nn.RNNCell, thop=_CELL_THOP)(_cell_rule("rnn_cell_counts", rnn_cell_ops))
module_rule(nn.GRUCell, thop=_CELL_THOP)(_cell_rule("gru_cell_counts", gru_cell_ops))
module_rule(nn.LSTMCell, thop=_CELL_THOP)(_cell_rule("lstm_cell_counts", lstm_cell_ops))
module_rule(nn.RNN, thop=_SEQUENCE_THOP)(_sequence_rule("rnn_counts", rnn_cell_ops))
module_rule(nn.GRU, thop=_SEQUENCE_THOP)(_sequence_rule("gru_counts", gru_cell_ops))
module_rule(nn.LSTM, thop=_SEQUENCE_THOP)(_sequence_rule("lstm_counts", lstm_cell_ops))


def mkldnn_rnn_layer_counts(args: tuple, kwargs: dict, out) -> Counts:
    # mkldnn_rnn_layer(input, w_ih [4H, in], w_hh [4H, H], b_ih, b_hh, hx, cx, reverse, batch_sizes,
    # mode, hidden_size, num_layers, has_biases, ...): the kernel a CPU LSTM runs, one direction of
    # one layer over T·B steps (seen at the aten level: a subclass that overrides forward, TorchScript)
    x, w_hh = args[0], args[2]
    steps = x.numel() // x.shape[-1] if x.dim() else 0
    return _counts(*lstm_cell_ops(x.shape[-1], w_hh.shape[1], bool(arg(args, kwargs, 12, "has_biases", True))), steps)


if hasattr(torch.ops.aten, "mkldnn_rnn_layer"):
    function_rule(torch.ops.aten.mkldnn_rnn_layer)(mkldnn_rnn_layer_counts)
