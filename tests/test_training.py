"""profile_training: one training step counted per layer, against closed forms and FlopCounterMode
around the same forward and ``.backward()``; activations against saved_tensors_hooks; the model
untouched whatever happens."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import inspect
import json
import subprocess
import sys
import warnings
import weakref

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_unchanged, load_example, snapshot
from profiler import CaptureError, UncountedError, UncountedWarning, profile, profile_training
from test_properties import random_models

transformers = pytest.importorskip("transformers")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))


def fcm_step(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> int:
    """FlopCounterMode's FLOPs for one forward and ``.backward()`` of the default loss."""
    with FlopCounterMode(display=False) as counter:
        out = model(*args, **(kwargs or {}))
        loss = out.loss if getattr(out, "loss", None) is not None else out.sum()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_matmul(result) -> int:
    return result.matmul_flops + result.backward_matmul_flops


# --- closed forms


def test_mlp_backward_matmuls_closed_form():
    model, x = mlp(), torch.rand(32, 64)
    result = profile_training(model, (x,))
    # each Linear's backward: weight gradient and input gradient, both the size of its forward;
    # the first layer's input needs no gradient
    assert result.backward_matmul_flops == 2 * (2 * 32 * 64 * 128) + 2 * (2 * 32 * 128 * 64) - 2 * 32 * 128 * 64
    assert result.layer("0").backward.matmul_flops == 2 * 32 * 64 * 128
    assert result.layer("2").backward.matmul_flops == 2 * (2 * 32 * 128 * 64)
    assert result.backward_macs == result.backward_matmul_flops // 2
    assert result.training_flops == result.total_flops + result.backward_flops


def test_frozen_first_layer_costs_only_the_second_weight_gradient():
    model, x = mlp(), torch.rand(32, 64)
    model[0].requires_grad_(False)
    result = profile_training(model, (x,))
    assert result.backward_matmul_flops == 2 * 32 * 128 * 64
    assert result.layer("0").backward.matmul_flops == 0


def test_activation_bytes_closed_form():
    model, x = mlp(), torch.rand(32, 64)
    result = profile_training(model, (x,))
    # the first layer's input, and ReLU's output (also the second layer's input, counted once)
    assert result.activation_bytes == 32 * 64 * 4 + 32 * 128 * 4 == 24_576
    assert result.memory.activations == result.activation_bytes == result.root.activation_bytes
    assert sum(layer.own_activation_bytes for layer in result.layers) == result.activation_bytes


def test_memory_for_each_optimizer():
    model, x = mlp(), torch.rand(32, 64)
    model[0].requires_grad_(False)
    trainable = 4 * (128 * 64 + 64)
    everything = 4 * (64 * 128 + 128) + trainable
    for optimizer, tensors in ((None, 0), ("sgd", 0), ("sgd_momentum", 1), ("adam", 2), ("adamw", 2)):
        memory = profile_training(model, (x,), optimizer=optimizer).memory
        assert (memory.parameters, memory.gradients, memory.optimizer_state) == (everything, trainable, tensors * trainable)
        # with the first layer frozen, only the second layer's input is saved (for its weight gradient)
        assert memory.activations == 32 * 128 * 4
        assert memory.total == everything + trainable + tensors * trainable + memory.activations
    custom = profile_training(model, (x,), optimizer=lambda p: 3 * p.numel()).memory
    assert custom.optimizer_state == 3 * (128 * 64 + 64)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'.*adamw"):
        profile_training(model, (x,), optimizer="lion")


# --- FlopCounterMode: forward + backward matmul FLOPs


def tiny_gpt2(attn: str = "eager") -> nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                     attn_implementation=attn)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def tiny_llama(attn: str = "eager") -> nn.Module:
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                      attn_implementation=attn)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update: y = base(x) + x A^T B^T."""

    def __init__(self, base: nn.Module, rank: int = 4) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 64)
        self.b = nn.Linear(64, 32)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.inp = nn.Linear(16, 32)
        self.block = Block()
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        return self.out(checkpoint(self.block, self.inp(x), use_reentrant=self.reentrant))


def lora_gpt2() -> nn.Module:
    model = tiny_gpt2().requires_grad_(False)
    for block in model.transformer.h:
        block.attn.c_attn = LoRALinear(nn.Linear(64, 192))
    return model


def checkpointed_gpt2(reentrant: bool) -> nn.Module:
    """Hugging Face's own checkpointing: each block's forward runs again in the backward, its
    Conv1D layers (no module rule) counted by the function mode as it runs."""
    model = tiny_gpt2()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
CASES = {
    "seed model": lambda: (load_example("transformer_flops").seed_model()[0], (torch.rand(10, 32, 64),), {}),
    "resnet18": lambda: (torchvision.models.resnet18(), (torch.rand(2, 3, 64, 64),), {}),
    "transformer encoder": lambda: (nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                                          enable_nested_tensor=False), (torch.rand(2, 10, 32),), {}),
    "gpt2": lambda: (tiny_gpt2(), (), {"input_ids": IDS, "labels": IDS}),
    "llama gqa": lambda: (tiny_llama(), (), {"input_ids": IDS, "labels": IDS}),
    "gpt2 lora": lambda: (lora_gpt2(), (), {"input_ids": IDS, "labels": IDS}),
    "checkpoint": lambda: (Checkpointed(reentrant=False), (torch.rand(4, 16),), {}),
    "checkpoint reentrant": lambda: (Checkpointed(reentrant=True), (torch.rand(4, 16),), {}),
    "gpt2 checkpointing": lambda: (checkpointed_gpt2(False), (), {"input_ids": IDS, "labels": IDS}),
    "gpt2 checkpointing reentrant": lambda: (checkpointed_gpt2(True), (), {"input_ids": IDS, "labels": IDS}),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_plus_backward_matmuls_equal_flop_counter(case):
    model, args, kwargs = CASES[case]()
    model.train()
    before = snapshot(model)
    result = profile_training(model, args, kwargs=kwargs, strict=True)
    assert_unchanged(model, before)
    assert result.backward_matmul_flops > 0
    assert step_matmul(result) == fcm_step(model, args, kwargs)


def test_lora_costs_less_than_full_fine_tuning():
    full = profile_training(tiny_gpt2(), kwargs={"input_ids": IDS, "labels": IDS})
    lora = profile_training(lora_gpt2(), kwargs={"input_ids": IDS, "labels": IDS})
    # frozen weights need no weight gradient: the 64 -> 64 projection (c_proj) of a frozen block
    # costs its input gradient only, 2 * 24 * 64 * 64 FLOPs
    proj = lora.layer("transformer.h.1.attn.c_proj")
    assert proj.backward.matmul_flops == 2 * 24 * 64 * 64
    assert full.layer("transformer.h.1.attn.c_proj").backward.matmul_flops == 2 * (2 * 24 * 64 * 64)
    assert lora.backward_matmul_flops < full.backward_matmul_flops


def test_checkpoint_recomputes_the_block_forward():
    model, x = Checkpointed(reentrant=True), torch.rand(4, 16)
    result = profile_training(model, (x,))
    plain = profile_training(nn.Sequential(model.inp, model.block, model.out), (x,))
    block = result.layer("block")
    # the block's forward runs once more in the backward, on top of the same gradients
    assert block.backward.matmul_flops == plain.layer("1").backward.matmul_flops + block.total.matmul_flops
    assert block.activation_bytes == 0  # nothing saved inside a checkpointed block


def leaves_against_flop_counter(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> int:
    """Each leaf layer's forward + backward matmul FLOPs against FlopCounterMode's per-module count."""
    model.train()
    result = profile_training(model, args, kwargs=kwargs)
    with FlopCounterMode(display=False) as counter:
        out = model(*args, **(kwargs or {}))
        (out.loss if getattr(out, "loss", None) is not None else out.sum()).backward()
    per_module = counter.get_flop_counts()
    compared = 0
    for layer in result.layers:
        key = f"{type(model).__name__}.{layer.name}"
        if layer.children or not layer.name or key not in per_module:
            continue
        assert layer.total.matmul_flops + layer.backward.matmul_flops == sum(per_module[key].values()), layer.name
        compared += 1
    return compared


def test_per_layer_against_flop_counter_per_module():
    # FlopCounterMode attributes a backward to modules by hooks on their outputs and inputs, which
    # is exact for layers in a chain; parallel branches (a ResNet's downsample) blur it, so these
    # are chains
    assert leaves_against_flop_counter(tiny_gpt2(), kwargs={"input_ids": IDS, "labels": IDS}) == 9
    vgg = torchvision.models.vgg11(num_classes=10)
    assert leaves_against_flop_counter(vgg, (torch.rand(1, 3, 32, 32),)) == 8 + 3


# --- activations against an independent saved_tensors_hooks count


def saved_bytes(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> int:
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args, **(kwargs or {}))
    del out
    return sum(seen.values())


@pytest.mark.parametrize("case", ["gpt2", "resnet18"])
def test_activation_bytes_equal_saved_tensors(case):
    model, args, kwargs = CASES[case]()
    model.train()
    torch.manual_seed(1)
    result = profile_training(model, args, kwargs=kwargs)
    torch.manual_seed(1)
    assert result.activation_bytes == saved_bytes(model, args, kwargs)
    assert sum(layer.own_activation_bytes for layer in result.layers) == result.activation_bytes


# --- the model untouched


def grads(model: nn.Module) -> list:
    return [(name, None if p.grad is None else (id(p.grad), p.grad.clone())) for name, p in model.named_parameters()]


def same_grads(before: list, after: list) -> bool:
    return all(
        a[0] == b[0] and (a[1] is None) == (b[1] is None) and (a[1] is None or (a[1][0] == b[1][0] and torch.equal(a[1][1], b[1][1])))
        for a, b in zip(before, after)
    )


class RaisesInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise ArithmeticError("backward tripped")


OUTCOMES = ("succeeds", "forward raises", "loss raises", "backward raises")


@pytest.mark.parametrize("outcome", OUTCOMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_model_comes_back_unchanged(outcome, data):
    built = data.draw(random_models(), label="model")
    model, plan = built.model, built.trip.plan
    for p in model.parameters():
        if data.draw(st.booleans(), label="has a gradient"):
            p.grad = torch.randn_like(p)
    if outcome == "forward raises":
        plan.error, plan.at = ValueError("tripped"), 1
    x = built.x.requires_grad_(data.draw(st.booleans(), label="input requires grad"))
    before, before_grads, rng = snapshot(model), grads(model), torch.get_rng_state()

    def loss(out):
        if outcome == "loss raises":
            raise KeyError("no such output")
        out = RaisesInBackward.apply(out) if outcome == "backward raises" else out
        return out.sum() + sum(p.sum() for p in model.parameters() if p.requires_grad)

    trainable = x.requires_grad or any(p.requires_grad for p in model.parameters())
    expected = {"forward raises": CaptureError, "loss raises": CaptureError,
                "backward raises": CaptureError if trainable else ValueError}.get(outcome, None if trainable else ValueError)
    with pytest.raises(expected) if expected else contextlib.nullcontext():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profile_training(model, (x,), loss=loss)
    assert_unchanged(model, before)
    assert same_grads(before_grads, grads(model))
    assert x.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_batchnorm_statistics_and_rng_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model[1].running_mean.fill_(0.5)
    x = torch.rand(2, 3, 8, 8)
    before, rng = snapshot(model), torch.get_rng_state()
    profile_training(model, (x,))
    assert_unchanged(model, before)  # running_mean, running_var and num_batches_tracked included
    assert torch.equal(torch.get_rng_state(), rng)
    assert model[1].num_batches_tracked.item() == 0


def test_errors_name_the_problem():
    model, x = mlp(), torch.rand(4, 64)
    with pytest.raises(ValueError, match="scalar.*shape \\[4, 64\\]"):
        profile_training(model, (x,), loss=lambda out: out)
    with pytest.raises(ValueError, match="no floating-point tensor that requires grad.*is every parameter frozen"):
        profile_training(mlp().requires_grad_(False), (x,))
    with pytest.raises(TypeError, match="loss must be a callable"):
        profile_training(model, (x,), loss="mse")
    with pytest.raises(CaptureError, match="the loss raised IndexError"):
        profile_training(model, (x,), loss=lambda out: out["logits"])
    with pytest.raises(ValueError, match="the loss is a leaf tensor .*compute it from the model's output"):
        profile_training(model, (x,), loss=lambda out: torch.zeros((), requires_grad=True))


def test_a_training_profile_holds_the_model_alone():
    model, x = mlp(), torch.rand(4, 64)

    class Inner(nn.Module):
        def forward(self, y):
            profile(model, (x,))  # a second profile of the model while the first runs
            return y

    with pytest.raises(CaptureError, match="nested profiling"):
        profile_training(nn.Sequential(model, Inner()), (x,))


# --- reports


def test_tables_and_exports_carry_the_training_columns():
    model, x = mlp(), torch.rand(32, 64)
    result = profile_training(model, (x,), optimizer="adam")
    header = result.table().splitlines()[0]
    assert "Bwd FLOPs" in header and "Act. bytes" in header
    ranked = result.table(sort_by="bwd_flops", columns="layer,bwd_flops")
    assert ranked.splitlines()[2].startswith("2 ")  # the second Linear: both of its gradients
    report = json.loads(result.to_json())
    totals = report["totals"]
    assert totals["backward_matmul_flops"] == result.backward_matmul_flops
    assert totals["training_flops"] == totals["flops"] + totals["backward_flops"]
    assert totals["activation_bytes"] == 32 * 64 * 4 + 32 * 128 * 4
    assert report["memory"]["total"] == result.memory.total
    assert "activation_bytes" in result.to_csv().splitlines()[0]
    assert "Bwd FLOPs" in result.html()
    with pytest.raises(ValueError, match="bwd_flops needs a training profile"):
        profile(model, (x,)).table(columns="layer,bwd_flops")


def test_strict_names_backward_operators_without_a_rule():
    class Unruled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return torch.fft.irfft(torch.fft.rfft(grad), n=grad.shape[-1])  # operators no rule counts

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return Unruled.apply(self.fc(x))

    with pytest.raises(UncountedError, match="backward function aten._fft_r2c"):
        profile_training(Model(), (torch.rand(2, 4),), strict=True)


# --- the meta device


def test_llama_70b_training_on_meta():
    code = """
import sys, torch, transformers
sys.path.insert(0, "tests"); sys.path.insert(0, "examples")
from torch.utils.flop_counter import FlopCounterMode
from llm_on_meta import llama_70b_config
from profiler import profile_training
config = llama_70b_config()
config._attn_implementation = "eager"
with torch.device("meta"):
    model = transformers.LlamaForCausalLM(config)
ids = torch.zeros(1, 4096, dtype=torch.long, device="meta")
result = profile_training(model, kwargs={"input_ids": ids, "labels": ids}, optimizer="adamw")
# this process's own peak (a child's ru_maxrss starts from its parent's), before FlopCounterMode's run
rss = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
with FlopCounterMode(display=False) as counter:
    model(input_ids=ids, labels=ids).loss.backward()
print(result.total_params, result.matmul_flops + result.backward_matmul_flops, counter.get_total_flops(),
      result.memory.parameters, result.memory.optimizer_state, rss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    params, ours, theirs, param_bytes, state_bytes, rss_kib = map(int, out)
    d, ffn, layers, vocab, kv = 8192, 28672, 80, 128256, 8 * 128
    assert params == vocab * d + layers * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d) + d + d * vocab
    assert ours == theirs
    assert (param_bytes, state_bytes) == (4 * params, 2 * 4 * params)
    assert rss_kib < 2 * 1024 * 1024


def test_cli_train(capsys):
    from profiler.cli import main

    argv = ["examples/my_models.py:Net", "--input-size", "8,32", "--input-size", "8,4", "--train", "--optimizer",
            "adam", "--units", "exact"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    model = load_example("my_models").Net()
    torch.manual_seed(0)
    result = profile_training(model, (torch.rand(8, 32), torch.rand(8, 4)), optimizer="adam")
    assert f"Training step: {result.training_flops:,} FLOPs" in out
    assert f"Memory: {result.memory.total:,} bytes" in out
    assert "Bwd FLOPs" in out.splitlines()[0]
    assert main(["examples/my_models.py:Net", "--input-size", "8,32", "--input-size", "8,4", "--optimizer", "adam"]) == 2
    assert "--optimizer goes with --train" in capsys.readouterr().err


def test_another_thread_cannot_profile_the_model_during_a_training_profile():
    import threading

    started, release = threading.Event(), threading.Event()

    class Waits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            started.set()
            release.wait(10)
            return self.fc(x)

    model, x = Waits(), torch.rand(2, 4)
    before = snapshot(model)
    errors = []
    worker = threading.Thread(target=lambda: profile_training(model, (x,)))
    worker.start()
    started.wait(10)
    try:
        with pytest.raises(RuntimeError, match="^the model is being profiled in another thread by profile_training"):
            profile(model, (x,))
        try:
            profile_training(model, (x,))
        except RuntimeError as exc:
            errors.append(str(exc))
    finally:
        release.set()
        worker.join()
    assert errors and "needs the model alone" in errors[0]
    assert_unchanged(model, before)


def test_activations_of_discarded_work_are_not_held():
    class Discards(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            for _ in range(5):
                torch.tanh(self.fc(x))  # discarded: what it saved goes with its graph
            return torch.tanh(self.fc(x))

    x = torch.rand(4, 8)
    result = profile_training(Discards(), (x,))
    # held for the backward: fc's input x (once for six calls) and the kept tanh's output
    assert result.activation_bytes == 4 * 8 * 4 + 4 * 8 * 4


class ResizesItsBuffer(nn.Module):
    """An observer that sizes its statistics on the first forward (as PerChannelMinMaxObserver does)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running", torch.empty(0))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if self.running.numel() == 0:
            self.running.resize_(x.shape[-1])
        self.running.copy_(x.detach().mean(0))
        return self.fc(x)


def test_a_buffer_the_forward_resizes_comes_back():
    model = nn.Sequential(ResizesItsBuffer(), nn.BatchNorm1d(8), nn.Dropout(0.5))
    x = torch.randn(4, 8)
    before, rng = snapshot(model), torch.get_rng_state()
    profile_training(model, (x,))
    assert_unchanged(model, before)
    assert model[0].running.shape == (0,) and torch.equal(torch.get_rng_state(), rng)


class Reentrant(nn.Module):
    """A checkpointed function of the block's own parameters: the recomputation calls no layer."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 16))
        self.w2 = nn.Parameter(torch.randn(16, 32))

    def inner(self, x):
        return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, self.w1)), self.w2)

    def forward(self, x):
        return x + checkpoint(self.inner, x, use_reentrant=True)


def test_reentrant_checkpoint_without_layers_inside_stays_in_its_layer():
    model = nn.Sequential(nn.Linear(8, 16), Reentrant(), nn.Linear(16, 2))
    result = profile_training(model, (torch.randn(4, 8),))
    forward = 2 * (2 * 4 * 16 * 32)  # the block's two matmuls
    assert result.layer("1").backward.matmul_flops == 2 * forward + forward  # both gradients, and the recomputation
    assert result.layer("").own_backward.matmul_flops == 0


@dataclasses.dataclass
class Batch:
    x: torch.Tensor


class OnBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, batch):
        x = batch.x if isinstance(batch, Batch) else batch["x"]
        return self.fc(x)


@pytest.mark.parametrize("wrap", [Batch, lambda x: collections.UserDict(x=x)], ids=["dataclass", "UserDict"])
def test_inputs_in_containers_are_cut_from_the_graph_that_made_them(wrap):
    upstream = nn.Linear(8, 8)
    features = upstream(torch.randn(3, 8))  # another model's output: requires grad, not a leaf
    result = profile_training(OnBatch(), (wrap(features),))
    assert upstream.weight.grad is None
    assert result.backward_matmul_flops == 2 * (2 * 3 * 8 * 4)  # the input's and the weight's gradients


def test_a_backward_leaving_the_model_is_reported():
    class Box:
        def __init__(self, x):
            self.x = x

    class OnBox(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, box):
            return self.fc(box.x)

    features = nn.Linear(8, 8)(torch.randn(3, 8))
    with pytest.warns(UncountedWarning, match="went past the model's inputs"):
        result = profile_training(OnBox(), (Box(features),))
    assert result.backward_matmul_flops == 2 * (2 * 3 * 8 * 4)  # the upstream matmul is not the model's


def test_lazy_modules():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(4))
    result = profile_training(model, (torch.rand(3, 8),))
    # the first layer's input, and ReLU's output (the second layer's input): not the new weights
    assert result.activation_bytes == 3 * 8 * 4 + 3 * 16 * 4
    assert result.total_params == 8 * 16 + 16 + 16 * 4 + 4


def test_an_optimizer_stepping_in_the_backward_is_held_back():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: optimizer.step())
    before = snapshot(model)
    profile_training(model, (torch.rand(4, 64),))
    assert_unchanged(model, before)  # weights included


def test_sparse_embedding_gradients_are_counted():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    profile_training(model, (torch.tensor([[1, 2, 3]]),), strict=True)


@pytest.mark.parametrize("retain_graph", [False, True])
def test_a_loss_that_runs_its_own_backward_is_refused(retain_graph):
    model, x = mlp(), torch.rand(4, 64)
    earlier = [torch.ones_like(p) for p in model.parameters()]
    for p, grad in zip(model.parameters(), earlier):
        p.grad = grad
    before = snapshot(model)

    def runs_backward(out):
        loss = out.sum()
        loss.backward(retain_graph=retain_graph)
        return loss

    with pytest.raises(ValueError, match="the loss ran a backward itself .*gradient of '0.weight' and 3 more"):
        profile_training(model, (x,), loss=runs_backward)
    assert_unchanged(model, before)
    assert all(p.grad is grad for p, grad in zip(model.parameters(), earlier))


def test_a_loss_differentiating_by_the_parameters_is_counted():
    # a gradient-norm penalty computes the parameters' gradients without accumulating them
    model, x = mlp(), torch.rand(4, 64)

    def penalised(out):
        grads = torch.autograd.grad(out.pow(2).sum(), list(model.parameters()), create_graph=True)
        return out.pow(2).sum() + sum(g.pow(2).sum() for g in grads)

    result = profile_training(model, (x,), loss=penalised)
    with FlopCounterMode(display=False) as counter:
        penalised(model(x)).backward()
    model.zero_grad(set_to_none=True)
    assert step_matmul(result) == counter.get_total_flops()


def test_overlapping_profiles_on_two_threads_give_the_random_state_back():
    # A draws and waits; B starts, draws and waits; A ends, then B: each putting back the state it
    # found would leave the one after A's draw
    import threading

    class Draws(nn.Module):
        def __init__(self, inside: threading.Event, go: threading.Event):
            super().__init__()
            self.fc, self.drop, self.inside, self.go = nn.Linear(4, 4), nn.Dropout(0.5), inside, go

        def forward(self, x):
            y = self.drop(self.fc(x))
            self.inside.set()
            self.go.wait(10)
            return y

    events = [threading.Event() for _ in range(4)]
    a, b, x = Draws(*events[:2]), Draws(*events[2:]), torch.rand(2, 4)
    alone = {}
    for name, model in (("a", a), ("b", b)):
        model.go.set()
        alone[name] = profile_training(model, (x,)).to_dict()
        model.go.clear()
    rng, results = torch.get_rng_state(), {}

    def run(name, model):
        results[name] = profile_training(model, (x,)).to_dict()

    first, second = (threading.Thread(target=run, args=pair) for pair in (("a", a), ("b", b)))
    first.start()
    a.inside.wait(10)
    second.start()
    b.inside.wait(10)
    a.go.set()
    first.join()
    b.go.set()
    second.join()
    assert results == alone
    assert torch.equal(torch.get_rng_state(), rng)


def test_busy_and_inference_mode_errors_say_so():
    model, x = mlp(), torch.rand(4, 64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        profile_training(model, (x,))


# --- what torch.utils.checkpoint keeps for its recomputation


class Scaled(nn.Module):
    """``fc(x) * scale``: the product saves both factors, which a checkpoint around it does not keep."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 256)

    def forward(self, x, scale):
        return self.fc(x) * scale


class CheckpointsScaled(nn.Module):
    """``proj``, then :class:`Scaled` under a checkpoint, given ``scale = proj(x) + 1`` the way
    ``how`` says. ``self.checkpoint`` is torch's; the oracle swaps it for a recording one."""

    def __init__(self, how: str, reentrant: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(256, 256)
        self.block = Scaled()
        self.how, self.reentrant = how, reentrant
        self.checkpoint = checkpoint

    def forward(self, x):
        h = self.proj(x)
        # a tensor that requires grad inside a container breaks a reentrant checkpoint's backward
        scale = (h + 1).detach() if self.reentrant else h + 1
        run = functools.partial(self.checkpoint, use_reentrant=self.reentrant)
        if self.how == "positional":
            return run(self.block, h, scale)
        if self.how == "keyword":
            return run(self.block, h, scale=scale)
        if self.how == "keyword container":
            return run(lambda a, scales: self.block(a, scales["all"][0]), h, scales={"all": [scale]})
        if self.how == "positional container":
            return run(lambda a, scales: self.block(a, scales[0]), h, (scale,))
        if self.how == "partial":  # as Hugging Face checkpoints a layer: partial(forward, layer, **kwargs)
            return run(functools.partial(self.block, scale=scale), h)
        if self.how == "closure":  # a lambda closing over scale
            return run(lambda a: self.block(a, scale), h)
        if self.how == "nested function":
            def scaled(a):
                return self.block(a, scale)
            return run(scaled, h)
        if self.how == "method":  # a bound method of an object (not a module) holding scale
            return run(Scaling(self.block, scale).apply, h)
        if self.how == "discarded":  # a checkpoint whose output is dropped keeps nothing
            run(self.block, h, scale=h * 2)
            return run(self.block, h, scale=scale)
        # mixed: a view of h (h's storage, already counted), a parameter (not an activation), a keyword
        return run(lambda a, view, weight, scale: self.block(a + view.sum() * 0 + weight.sum() * 0, scale),
                   h, h[:, :128], self.proj.weight, scale=scale)


class Scaling:
    """Not a module: a block and the scale it multiplies by, applied by a method."""

    def __init__(self, block: nn.Module, scale: torch.Tensor) -> None:
        self.block, self.scale = block, scale

    def apply(self, a):
        return self.block(a, self.scale)


def passed_to_checkpoint(model: nn.Module, args: tuple = (), kwargs: dict | None = None, *,
                         holders: list | None = None) -> int:
    """The oracle: bytes of the storages a plain ``saved_tensors_hooks`` pack hook sees, and of the
    tensors passed to each checkpoint that returned a result still referenced (positional,
    keyword, inside containers and a ``functools.partial``), each storage once, the model's
    parameters and buffers left out. ``holders``: objects whose ``checkpoint`` attribute (or
    Hugging Face's ``_gradient_checkpointing_func``) is the checkpoint to record."""
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def note(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()

    def leaves(fn, args, kwargs):
        # what the function keeps: a partial's arguments, a function's nonlocals, a method's object's state
        if isinstance(fn, functools.partial):
            bound = (fn.args, fn.keywords)
        elif inspect.ismethod(fn) and not isinstance(fn.__self__, nn.Module):
            bound = vars(fn.__self__)
        elif inspect.isfunction(fn):
            bound = {k: v for k, v in inspect.getclosurevars(fn).nonlocals.items() if not isinstance(v, nn.Module)}
        else:
            bound = ()
        return [t for t in torch.utils._pytree.tree_leaves((bound, args, kwargs)) if isinstance(t, torch.Tensor)]

    kept: list = []  # (weak reference to the output, the tensors passed)

    def recording(real):
        def run(fn, *a, **kw):
            out = real(fn, *a, **kw)
            kept.append((weakref.ref(out), leaves(fn, a, kw)))
            return out
        return run

    originals = []
    for holder in holders or [model]:
        name = "checkpoint" if hasattr(holder, "checkpoint") else "_gradient_checkpointing_func"
        originals.append((holder, name, getattr(holder, name)))
        setattr(holder, name, recording(getattr(holder, name)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (note(t), t)[1], lambda t: t):
            out = model(*args, **(kwargs or {}))
        for ref, tensors in kept:
            if ref() is not None:
                for tensor in tensors:
                    note(tensor)
    finally:
        for holder, name, real in originals:
            setattr(holder, name, real)
    del out
    return sum(seen.values())


CHECKPOINT_CASES = [(how, False) for how in ("positional", "keyword", "keyword container", "positional container",
                                             "partial", "closure", "nested function", "method", "discarded", "mixed")]
CHECKPOINT_CASES += [(how, True) for how in ("positional", "positional container", "partial")]


@pytest.mark.parametrize(("how", "reentrant"), CHECKPOINT_CASES,
                         ids=[f"{how}-{'reentrant' if r else 'non-reentrant'}" for how, r in CHECKPOINT_CASES])
def test_what_a_checkpoint_keeps_is_counted(how, reentrant):
    model, x = CheckpointsScaled(how, reentrant), torch.randn(64, 256)
    result = profile_training(model, (x,))
    # proj's input x, h (the checkpoint's input) and scale: the block inside saves nothing
    assert result.activation_bytes == 3 * 64 * 256 * 4
    assert result.activation_bytes == passed_to_checkpoint(model, (x,))
    # h and scale are kept for the model's own call of checkpoint, x by proj
    assert result.layer("").own_activation_bytes == 2 * 64 * 256 * 4
    assert result.layer("proj").own_activation_bytes == 64 * 256 * 4


def test_what_a_selective_checkpoint_caches_is_counted():
    """A selective checkpoint caches the outputs its policy saves (here fc's addmm) past the
    saved-tensor hooks, for its recomputation to reuse: activations of the layer calling it."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    cached = []

    def policy(ctx, op, *args, **kwargs):
        if op is not torch.ops.aten.addmm.default:
            return CheckpointPolicy.PREFER_RECOMPUTE
        if not ctx.is_recompute:
            cached.append(ctx.op_output)
        return CheckpointPolicy.MUST_SAVE

    model, x = CheckpointsScaled("keyword", reentrant=False), torch.randn(64, 256)
    model.checkpoint = functools.partial(checkpoint, context_fn=lambda: create_selective_checkpoint_contexts(policy),
                                         respect_saved_tensors_hooks=False)
    result = profile_training(model, (x,))
    # x, h and scale, as without a policy, and fc's output, cached
    assert result.activation_bytes == 4 * 64 * 256 * 4
    cached.clear()
    kept = passed_to_checkpoint(model, (x,))
    assert result.activation_bytes == kept + sum(t.untyped_storage().nbytes() for t in cached)
    assert result.layer("").own_activation_bytes == 3 * 64 * 256 * 4


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_hugging_face_checkpointing_counts_the_keyword_arguments(reentrant):
    """Hugging Face passes the attention mask, cos/sin and position ids to a checkpointed layer by
    keyword, in ``partial(forward, layer, **kwargs)``."""
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    layers = list(model.model.layers)
    result = profile_training(model, kwargs={"input_ids": IDS, "labels": IDS})
    expected = passed_to_checkpoint(model, kwargs={"input_ids": IDS, "labels": IDS}, holders=layers)
    assert result.activation_bytes == expected
    assert result.activation_bytes > saved_bytes(model, kwargs={"input_ids": IDS, "labels": IDS})  # what the hook alone sees


# --- requires_grad that train() changes


class UnfreezesInTraining(nn.Module):
    """A backbone frozen for inference that ``train()`` unfreezes (and ``eval()`` freezes again)."""

    def __init__(self, raises: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.raises = raises

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.requires_grad_(mode)
        return self

    def forward(self, x):
        y = self.backbone(x)
        if self.raises:
            raise ValueError("tripped")
        return self.head(y)


@pytest.mark.parametrize("raises", [False, True], ids=["succeeds", "forward raises"])
def test_requires_grad_that_train_changes_comes_back(raises):
    model, x = UnfreezesInTraining(raises).eval(), torch.randn(4, 8)
    before = snapshot(model)
    with pytest.raises(CaptureError) if raises else contextlib.nullcontext():
        result = profile_training(model, (x,))
    assert_unchanged(model, before)
    assert [p.requires_grad for p in model.backbone.parameters()] == [False, False]
    assert model.backbone.weight.grad is None
    if not raises:  # the step ran as a training loop's after train(): the backbone's weight gradient too
        assert result.layer("backbone").backward.matmul_flops == 2 * 4 * 8 * 8
        every_weight = 4 * ((8 * 8 + 8) + (8 * 2 + 2))  # float32: the backbone trains in the step, as the head
        assert result.memory.gradients == every_weight


# --- nothing outlives a call


ROWS, WIDTH = 97, 131  # the activations' shape: sizes no other tensor of the process has


class Big(nn.Module):
    """Makes activations of ``ROWS x WIDTH`` elements (a size nothing else in the process has), then
    raises in the forward, or gives an output whose backward raises."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.where = where

    def forward(self, x):
        y = torch.tanh(self.fc(x))
        if self.where == "forward":
            raise ValueError("tripped")
        return RaisesInBackward.apply(y) if self.where == "backward" else y


def big_tensors(model: nn.Module) -> int:
    """Tensors of ``ROWS x WIDTH`` elements alive after a collection, the model's own left out."""
    gc.collect()
    own = {id(p) for p in model.parameters()}
    return sum(1 for o in gc.get_objects()  # type(), not isinstance(): a deprecated module proxy warns on __class__
               if issubclass(type(o), torch.Tensor) and o.numel() == ROWS * WIDTH and id(o) not in own)


@pytest.mark.parametrize("where", ["forward", "loss", "backward"])
def test_a_failing_step_keeps_nothing_alive(where):
    model = Big(where)
    before = big_tensors(model)
    inputs = []

    def loss(out):
        if where == "loss":
            raise KeyError("no such output")
        return out.sum()

    for _ in range(5):  # one leaking call would show; a few show it is not a one-off cache
        x = torch.randn(ROWS, WIDTH)
        inputs.append(weakref.ref(x))
        try:
            profile_training(model, (x,), loss=loss)
        except CaptureError:
            pass
        else:
            pytest.fail("the step did not raise")
        del x
    assert big_tensors(model) == before  # the inputs, nor the activations: fc's output, tanh's
    assert [ref for ref in inputs if ref() is not None] == []


# --- the restore: every part of it, whatever raises, and buffers written through another reference


class Averaged(nn.Module):
    """Linear, Dropout and BatchNorm, with a running average buffer the forward writes the way
    ``how`` says: through a dict made at init (the original object), through a view of it, or
    through the dict and the attribute both (the working copy and the original)."""

    def __init__(self, how: str = "dict", raises: bool = False) -> None:
        super().__init__()
        self.fc, self.drop, self.norm = nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)
        self.register_buffer("avg", torch.ones(4))
        self.state = {"avg": self.avg, "view": self.avg[:2]}
        self.how, self.raises = how, raises

    def forward(self, x):
        if self.how in ("dict", "dict and attribute"):
            self.state["avg"].mul_(0.9)
        if self.how == "view":
            self.state["view"].mul_(0.9)
        if self.how == "dict and attribute":
            self.avg.add_(1)
        if self.raises:
            raise ValueError("tripped")
        return self.norm(self.drop(self.fc(x))) * self.avg


@pytest.mark.parametrize("raises", [False, True], ids=["succeeds", "forward raises"])
@pytest.mark.parametrize("how", ["dict", "view", "dict and attribute"])
def test_a_buffer_written_through_another_reference_comes_back(how, raises):
    model, x = Averaged(how, raises), torch.randn(3, 4)
    original, before = model.avg, snapshot(model)
    with pytest.raises(CaptureError) if raises else contextlib.nullcontext():
        profile_training(model, (x,))
    assert_unchanged(model, before)
    assert model.avg is original and model.state["avg"] is original
    assert torch.equal(model.state["view"], torch.ones(2)) and model.state["view"]._base is original


@pytest.mark.parametrize("error", [RuntimeError("tripped"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"])
def test_a_restore_that_raises_stops_no_other_restore(monkeypatch, error):
    """The first restore (removing the step's gradient watchers) raises: the gradients, the buffers
    and the random state still come back, and later profiles still put the random state back."""
    model, x = Averaged("dict"), torch.randn(3, 4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads, original, before, rng = [p.grad for p in model.parameters()], model.avg, snapshot(model), torch.get_rng_state()
    remove = torch.utils.hooks.RemovableHandle.remove
    calls = []

    def raising(handle):
        calls.append(handle)
        if len(calls) == 1:  # once: the hooks profile_training attached come off as usual
            raise error
        remove(handle)

    monkeypatch.setattr(torch.utils.hooks.RemovableHandle, "remove", raising)
    with pytest.raises((type(error), CaptureError)):
        profile_training(model, (x,))
    monkeypatch.undo()
    assert [p.grad for p in model.parameters()] == grads
    assert model.avg is original and torch.equal(original, torch.ones(4))
    assert torch.equal(model.norm.running_mean, before["state"]["norm.running_mean"])
    assert torch.equal(torch.get_rng_state(), rng)  # the step drew (dropout)
    for p in model.parameters():  # the one watcher whose removal raised: the only thing left
        p._backward_hooks = None
    assert_unchanged(model, before)
    later = Averaged("dict")
    rng = torch.get_rng_state()
    profile_training(later, (x,))
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_random_state_holder_that_never_gave_it_back_stops_no_restore():
    from hooks.backward import _random_state

    class Holder:
        pass

    holder = Holder()
    _random_state.take(holder)  # a step that died before giving it back
    del holder
    gc.collect()
    model, x = Averaged("dict"), torch.randn(3, 4)
    rng = torch.get_rng_state()
    profile_training(model, (x,))
    assert torch.equal(torch.get_rng_state(), rng)


# --- what the step counts: only this model's checkpoints, inputs' gradients, the default loss


class Upstream(nn.Module):
    """A model whose reentrant checkpoint keeps a tensor past the saved-tensor hooks: the scale
    bound in the function it recomputes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def scaled(self, x, scale):
        return self.fc(x) * scale

    def forward(self, x):
        # detached: a tensor that requires grad outside the arguments breaks a reentrant backward
        return checkpoint(functools.partial(self.scaled, scale=(x * 3).detach()), x * 2, use_reentrant=True)


def test_a_checkpoint_in_the_graph_that_made_an_input_is_not_this_models():
    """The input comes out of another model's reentrant checkpoint: what that checkpoint keeps is
    not the profiled model's activations (the search stops at the inputs)."""
    model, x = nn.Sequential(nn.Linear(16, 16), nn.Tanh()), torch.randn(8, 16, requires_grad=True)
    alone = profile_training(model, (torch.randn(8, 16, requires_grad=True),)).activation_bytes
    made = Upstream()(x)
    assert profile_training(model, (made,)).activation_bytes == alone == saved_bytes(model, (made,))


def test_another_threads_checkpoint_is_not_the_steps():
    """A thread that carries the step's function mode (as torch propagates thread-local state to
    worker threads) runs a checkpoint: what it keeps is not the step's activation."""
    import threading

    class Offloads(nn.Module):
        def __init__(self, carried: bool) -> None:
            super().__init__()
            self.proj, self.block, self.carried = nn.Linear(256, 256), Scaled(), carried

        def forward(self, x):
            h = self.proj(x)
            modes, out = torch.overrides._get_current_function_mode_stack(), []

            def work():
                for mode in modes if self.carried else ():
                    torch._C._push_on_torch_function_stack(mode)
                try:
                    out.append(checkpoint(self.block, h, scale=h.detach() + 1, use_reentrant=False))
                finally:
                    for _ in modes if self.carried else ():
                        torch._C._pop_torch_function_stack()

            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
            return out[0]

    x = torch.randn(64, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the other thread's calls are named as not counted
        plain, carried = (profile_training(Offloads(c), (x,)).activation_bytes for c in (False, True))
    assert carried == plain == 64 * 256 * 4  # proj's input: the other thread's work is not the step's


class MakesItsInputRequireGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, extra):
        x.requires_grad_(True)
        extra["t"].requires_grad_(True)
        return self.fc(x * extra["t"])


@pytest.mark.parametrize("grad", [None, "a gradient"])
def test_an_input_the_forward_makes_require_grad_keeps_its_grad(grad):
    x, t = torch.randn(2, 4), torch.randn(2, 4)
    old = None if grad is None else torch.ones(2, 4)
    t.grad = old
    profile_training(MakesItsInputRequireGrad(), (x, {"t": t}))
    assert x.grad is None and t.grad is old
    assert old is None or torch.equal(old, torch.ones(2, 4))


class NestedOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return [torch.nested.as_nested_tensor([self.fc(x[:1]), self.fc(x)])]  # strided, differentiable


def test_the_default_loss_failing_on_the_output_says_so():
    from profiler.training import LossError

    with pytest.raises(LossError, match=r"the default loss .* failed on a nested .* tensor \(strided layout\).*loss="):
        profile_training(NestedOut(), (torch.randn(3, 4),))


def test_a_step_capture_without_trainable_flags_sizes_memory_by_the_current_ones():
    from hooks.backward import StepCapture, capture_step
    from hooks import REGISTRY
    from profiler.training import step_memory

    model = mlp()
    model[0].requires_grad_(False)
    step = capture_step(model, lambda: model(torch.randn(2, 64)), lambda out: out.sum(), REGISTRY.resolver())
    bare = StepCapture(step.forward, step.backward, step.activations, step.parameters, step.buffers)
    assert bare.trainable is None
    memory = step_memory(bare.parameters, bare.buffers, 0, "adam", bare.trainable)
    assert memory.gradients == (128 * 64 + 64) * 4  # the second layer's weight and bias
