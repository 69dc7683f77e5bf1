"""Every way a model runs is counted exactly or reported: compiled, scripted, traced, exported,
vmapped, subclassed, shared, custom and sparse. The truth is the eager count or a formula."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hooks import REGISTRY, Counts
from profiler import UncountedError, UncountedWarning, profile

from conftest import assert_tree_invariant, assert_unchanged, counted, flop_counter_flops, snapshot

warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace|trace_method)` is deprecated", category=FutureWarning)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


X = torch.rand(8, 64)
MLP_MACS = 8 * 64 * 64 + 8 * 64 * 32  # Linear(64, 64) and Linear(64, 32) on 8 rows


def same_counts(result, eager) -> None:
    """Totals and every layer both results name equal; the trees add up."""
    assert (result.total_macs, result.total_flops, result.matmul_flops, result.total_params) == (
        eager.total_macs, eager.total_flops, eager.matmul_flops, eager.total_params)
    assert_tree_invariant(result.root)
    theirs = {layer.name: layer for layer in result.layers}
    for layer in eager.layers:
        if layer.name in theirs:
            assert (theirs[layer.name].total, theirs[layer.name].params) == (layer.total, layer.params), layer.name


# --- compiled ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_compiled_model_counts_as_eager(backend, device):
    model = mlp().to(device)
    x = X.to(device)
    eager = counted(model, (x,))
    compiled = torch.compile(model, backend=backend)
    before = snapshot(model)
    result = counted(compiled, (x,))
    same_counts(result, eager)
    assert [layer.name for layer in result.layers] == [layer.name for layer in eager.layers]
    assert result.total_macs == MLP_MACS
    if device == "cpu":  # meta tensors hold no values to compare
        assert_unchanged(model, before)


def test_compiled_submodule_counts_as_eager():
    model = mlp()
    eager = counted(model, (X,))
    model[0] = torch.compile(model[0])
    same_counts(counted(model, (X,)), eager)


def test_compiled_model_can_be_timed():
    result = profile(torch.compile(mlp()), (X,), measure_time=True, repeats=2, warmup=0)
    assert result.root.time is not None and result.total_macs == MLP_MACS


# --- TorchScript -----------------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [torch.jit.script, lambda m: torch.jit.trace(m, X)], ids=["script", "trace"])
def test_scripted_and_traced_models_count_their_aten_operators(convert):
    model = mlp()
    eager = counted(model, (X,))
    scripted = convert(model)
    result = profile(scripted, (X,), strict=True)
    same_counts(result, eager)
    assert result.total_macs == MLP_MACS
    # TorchScript runs no Python: the aten operators are the scripted module's own calls
    assert {f.function for f in result.root.functions} >= {"aten.addmm"}


def test_scripted_submodule_is_counted_like_the_eager_one():
    model = mlp()
    eager = counted(model, (X,))
    model[2] = torch.jit.script(model[2])
    result = counted(model, (X,))
    same_counts(result, eager)
    assert result.layer("2").total == Counts.matmul(8 * 64 * 32)
    assert result.layer("2").type == "Linear"  # the class it was scripted from


def test_scripted_module_with_an_operator_without_rule_is_reported():
    class Spectrum(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    scripted = torch.jit.script(nn.Sequential(nn.Linear(64, 64), Spectrum()))
    with pytest.raises(UncountedError, match=r"aten\._fft_r2c"):
        profile(scripted, (X,), strict=True)


# --- torch.export ----------------------------------------------------------------------------------


def test_exported_module_is_profiled_without_eval():
    model = mlp()
    eager = counted(model, (X,))
    exported = torch.export.export(model, (X,)).module()
    with pytest.raises(NotImplementedError):
        exported.eval()  # why the profile sets the flags itself
    before = snapshot(exported)
    result = profile(exported, (X,), strict=True)
    assert (result.total_macs, result.matmul_flops, result.total_params) == (
        eager.total_macs, eager.matmul_flops, eager.total_params)
    assert_unchanged(exported, before)


# --- vmap ------------------------------------------------------------------------------------------


class Vmapped(nn.Module):
    """A per-sample linear and a per-sample module call, vmapped over the first dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.vmap(lambda sample: F.linear(sample, self.proj.weight))(x)
        return torch.vmap(self.head)(h)


def test_vmap_counts_the_whole_batch():
    x = torch.rand(5, 3, 8)  # vmapped over 5 samples of [3, 8]
    result = counted(Vmapped(), (x,))
    assert result.total_macs == 5 * 3 * 8 * 16 + 5 * 3 * 16 * 4
    assert result.matmul_flops == flop_counter_flops(Vmapped(), (x,))


def test_nested_vmap_counts_every_level():
    w = torch.rand(6, 8)
    x = torch.rand(2, 5, 3, 8)

    class Nested(nn.Module):
        def forward(self, x):
            return torch.vmap(torch.vmap(lambda s: s @ w.T))(x)

    assert counted(Nested(), (x,)).total_macs == 2 * 5 * 3 * 8 * 6


# --- subclasses of ruled layers ----------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """loralib's pattern: the frozen layer plus a low-rank update B A."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__(n_in, n_out)
        self.A = nn.Parameter(torch.rand(rank, n_in))
        self.B = nn.Parameter(torch.rand(n_out, rank))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + x @ self.A.T @ self.B.T


class NormThenGELU(nn.LayerNorm):
    def forward(self, x):
        return F.gelu(super().forward(x))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """torchvision's LayerNorm2d: the same normalisation over channels of [N, C, H, W]."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def test_lora_subclass_counts_the_low_rank_update():
    model = nn.Sequential(LoRALinear(64, 32, rank=4))
    result = counted(model, (X,))
    assert result.layer("0").status == "traced"
    assert result.total_macs == 8 * 64 * 32 + 8 * 64 * 4 + 8 * 4 * 32
    assert result.matmul_flops == flop_counter_flops(model, (X,))
    assert result.total_flops == result.matmul_flops + 8 * 32  # and the add of the two branches


def test_norm_subclass_counts_its_activation():
    model = nn.Sequential(NormThenGELU(64))
    result = counted(model, (X,))
    plain = counted(nn.Sequential(nn.LayerNorm(64)), (X,))
    gelu = 5 * 8 * 64  # GELU's 5 FLOPs per element
    assert result.total_flops == plain.total_flops + gelu


def test_subclass_that_computes_the_same_keeps_the_base_rule():
    model = nn.Sequential(ChannelsFirstLayerNorm(16))
    x = torch.rand(2, 16, 5, 5)
    result = counted(model, (x,))
    base = counted(nn.Sequential(nn.LayerNorm(16)), (x.permute(0, 2, 3, 1),))
    assert result.layer("0").status == "counted" and result.layer("0").rule == "layer_norm_counts"
    assert result.layer("0").functions == ()
    assert result.root.total == base.root.total  # thop's MACs for LayerNorm included


def test_subclass_not_overriding_forward_inherits_the_rule():
    model = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(64, 32))
    result = counted(model, (X,))
    assert (result.layer("0").status, result.total_macs) == ("counted", 8 * 64 * 32)


class Recursive(nn.Linear):
    def forward(self, x, depth: int = 2):
        y = super().forward(x)
        return self(y, depth - 1) if depth else y


class HoldsLinears(nn.Linear):
    def __init__(self) -> None:
        super().__init__(64, 64)
        self.inner = nn.Linear(64, 16)

    def forward(self, x):
        return self.inner(super().forward(x))


def test_recursive_subclass_counts_every_call():
    result = counted(nn.Sequential(Recursive(64, 64)), (X,))
    assert result.total_macs == 3 * 8 * 64 * 64
    assert result.layer("0").calls == 3


def test_subclass_holding_child_layers_counts_them():
    result = counted(nn.Sequential(HoldsLinears()), (X,))
    assert result.total_macs == 8 * 64 * 64 + 8 * 64 * 16
    assert result.layer("0.inner").total == Counts.matmul(8 * 64 * 16)


# --- one module under two parents --------------------------------------------------------------------


class TwoParents(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(64, 64)
        self.a = nn.Sequential(shared, nn.ReLU())
        self.b = nn.Sequential(shared)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


def test_shared_module_calls_go_to_the_parent_that_made_them():
    result = counted(TwoParents(), (X,))
    call = 8 * 64 * 64
    assert (result.layer("a").total.macs, result.layer("b").total.macs) == (2 * call, call)
    assert (result.layer("a.0").calls, result.layer("b.0").calls) == (2, 1)
    assert result.total_macs == 3 * call
    assert result.total_params == 64 * 64 + 64  # once


# --- functions -------------------------------------------------------------------------------------


class Flex(nn.Module):
    def forward(self, q, k, v):
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, enable_gqa=True)


def test_flex_attention_counts_like_sdpa():
    from torch.utils.flop_counter import flop_registry

    q, k = torch.rand(2, 16, 1024, 64), torch.rand(2, 4, 1024, 64)  # grouped-query: 4 kv heads
    result = counted(Flex(), (q, k, k))
    assert result.total_macs == 2 * (2 * 16 * 1024 * 1024 * 64)  # scores and weighted sum
    assert result.matmul_flops == 8_589_934_592
    # FlopCounterMode's own formula (its mode cannot run flex_attention eagerly in this torch)
    assert result.matmul_flops == flop_registry[torch.ops.higher_order.flex_attention](q, k, k)


def test_scaled_mm_counts_as_a_matmul():
    class FP8(nn.Module):
        def forward(self, a, b):
            one = torch.tensor(1.0, device=a.device)
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)

    a = torch.rand(48, 80, device="meta").to(torch.float8_e4m3fn)
    b = torch.rand(112, 80, device="meta").to(torch.float8_e4m3fn).t()
    result = counted(FP8(), (a, b))
    assert result.matmul_flops == 2 * 48 * 80 * 112


def test_functions_that_do_no_arithmetic_are_free():
    class Free(nn.Module):
        def forward(self, x):
            grid = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")[0]
            a, b = torch.broadcast_tensors(x, torch.eye(3))
            return torch.atleast_2d(a) * b + grid

    result = profile(Free(), (torch.rand(3),), strict=True)
    assert (result.total_macs, result.total_flops) == (0, 2 * 3 * 3)  # the * and the +


def test_custom_op_is_reported_then_counted_by_a_registered_rule():
    @torch.library.custom_op("hookprof_test::scale", mutates_args=())
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @scale.register_fake
    def _(x):
        return torch.empty_like(x)

    class UsesOp(nn.Module):
        def forward(self, x):
            return torch.ops.hookprof_test.scale(x)

    with pytest.raises(UncountedError, match=r"hookprof_test\.scale"):
        profile(UsesOp(), (X,), strict=True)
    op = torch.ops.hookprof_test.scale.default
    REGISTRY.function_rule(op)(lambda args, kwargs, out: Counts.elementwise(flops=out.numel()))
    try:
        assert counted(UsesOp(), (X,)).total_flops == 8 * 64
    finally:
        del REGISTRY.function_rules[op]


# --- quantized and sparse ----------------------------------------------------------------------------


def test_dynamically_quantized_linear_counts_packed_weights():
    model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(64, 32)), {nn.Linear}, dtype=torch.qint8)
    result = counted(model, (X,))
    assert result.total_params == 64 * 32 + 32
    assert result.total_macs == 8 * 64 * 32


def sparse_rows() -> torch.Tensor:
    x = torch.rand(8, 64)
    x[x < 0.7] = 0
    return x


def test_sparse_times_dense_counts_stored_values():
    a, b = sparse_rows().to_sparse(), torch.rand(64, 16)

    class Products(nn.Module):
        def forward(self, a, b):
            return torch.sparse.mm(a, b) + a @ b

    result = counted(Products(), (a, b))
    assert result.matmul_flops == 2 * (2 * a._nnz() * 16)


def test_linear_fed_a_sparse_tensor_is_reported_not_counted_dense():
    x = sparse_rows().to_sparse_csr()
    with pytest.raises(UncountedError, match="Linear"):
        profile(nn.Sequential(nn.Linear(64, 16)), (x,), strict=True)
    with pytest.warns(UncountedWarning):
        assert profile(nn.Sequential(nn.Linear(64, 16)), (x,)).total_macs == 0


# --- what is reported ----------------------------------------------------------------------------------


class Branches(nn.Module):
    """torch.cond: a higher-order operator with no rule; its branches run inside it, unseen."""

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t @ t, lambda t: t + 1, (x,))


def test_higher_order_operator_without_rule_is_reported():
    with pytest.raises(UncountedError, match=r"higher_order\.cond"):
        profile(Branches(), (torch.rand(4, 4),), strict=True)


def test_a_forward_that_loads_dynamo_is_run_again_eagerly():
    # in a fresh process Dynamo is not loaded: flex_attention loads it and compiles under the hooks
    code = (
        "import sys, torch\n"
        "from test_execution_paths import Flex\n"
        "from profiler import profile\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "q, k = torch.rand(1, 2, 8, 4), torch.rand(1, 2, 8, 4)\n"
        "print(profile(Flex(), (q, k, k)).matmul_flops)\n"
    )
    tests = str(__import__("pathlib").Path(__file__).parent)
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                         cwd=tests, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) == 2 * 2 * (1 * 2 * 8 * 8 * 4)  # scores and weighted sum, as FLOPs


def test_verbose_says_what_each_wrapper_did(capsys):
    model = mlp()
    model[0] = torch.jit.script(model[0])
    model[2] = torch.compile(model[2])
    profile(torch.compile(model), (X,), verbose=True)
    out = capsys.readouterr().out
    assert "the model is a torch.compile wrapper" in out
    assert "layer '0' is TorchScript" in out
    assert "layer '2' is a torch.compile wrapper" in out
    exported = torch.export.export(mlp(), (X,)).module()
    profile(exported, (X,), verbose=True)
    assert "refuses eval()" in capsys.readouterr().out


class UnpackedLSTM(nn.LSTM):
    """Overrides forward, so it is traced: on CPU the LSTM runs aten.mkldnn_rnn_layer per layer."""

    def forward(self, x):
        return super().forward(x)[0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_lstm_subclass_counts_its_fused_kernel_as_the_lstm_rule(bidirectional):
    x = torch.randn(3, 5, 8)
    subclass = UnpackedLSTM(8, 16, num_layers=2, batch_first=True, bidirectional=bidirectional)
    plain = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=bidirectional)
    traced, ruled = counted(subclass, (x,)), counted(plain, (x,))
    assert (traced.total_macs, traced.total_flops, traced.matmul_flops) == (
        ruled.total_macs, ruled.total_flops, ruled.matmul_flops)
