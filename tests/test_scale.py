"""Scale: the meta device end to end, LLM-sized counts, and many modules."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_tree_invariant, load_example
from profiler import profile


def gpt2_config() -> transformers.GPT2Config:
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, attn_implementation="eager")


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        pytest.param(lambda: load_example("transformer_flops").seed_model()[0], lambda d: {"inputs": (torch.rand(10, 32, 64, device=d),)},
                     id="seed"),
        pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                           nn.Flatten(), nn.Linear(32, 4)),
                     lambda d: {"inputs": (torch.rand(2, 3, 16, 16, device=d),)}, id="cnn"),
        pytest.param(lambda: transformers.GPT2LMHeadModel(gpt2_config()),
                     lambda d: {"kwargs": {"input_ids": torch.zeros(1, 16, dtype=torch.long, device=d)}}, id="gpt2"),
        pytest.param(lambda: nn.LSTM(8, 16, num_layers=2), lambda d: {"inputs": (torch.rand(5, 3, 8, device=d),)}, id="lstm"),
    ],
)
def test_meta_counts_equal_cpu_counts(build, inputs):
    torch.manual_seed(0)
    cpu = profile(build(), **inputs("cpu"))
    with torch.device("meta"):
        model = build()
    meta = profile(model, **inputs("meta"))
    assert meta.to_dict()["layers"] == cpu.to_dict()["layers"]
    assert (meta.total_macs, meta.total_flops, meta.total_params) == (cpu.total_macs, cpu.total_flops, cpu.total_params)
    assert meta.table() == cpu.table()


def llama_70b() -> nn.Module:
    config = load_example("llm_on_meta").llama_70b_config()
    config._attn_implementation = "eager"
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


def test_llama_70b_shape_on_meta():
    model = llama_70b()
    ids = torch.zeros(1, 4096, dtype=torch.long, device="meta")
    result = profile(model, kwargs={"input_ids": ids})
    d, ffn, layers, vocab, kv = 8192, 28672, 80, 128256, 8 * 128
    # per layer: q and o projections d x d, k and v d x kv, gate/up/down d x ffn, two RMSNorm weights d
    params = vocab * d + layers * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d) + d + d * vocab
    assert result.total_params == params == 70_553_706_496
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    assert result.matmul_flops == counter.get_total_flops()
    # 2 x (matmul parameters x tokens) + attention: scores and weighted sum, 64 heads of 128 over 4096 x 4096
    t = 4096
    matmul_params = layers * (2 * d * d + 2 * d * kv + 3 * d * ffn) + d * vocab
    assert result.matmul_flops == 2 * (matmul_params * t + layers * 2 * 64 * t * t * 128)
    assert result.total_macs > 2**47  # far beyond what float32 counts exactly, still an exact int
    assert isinstance(result.total_macs, int)


def test_mixture_of_experts_on_meta_shows_the_experts():
    config = transformers.MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, vocab_size=1000)
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(config).to(torch.bfloat16)
    tokens = 32
    result = profile(model, kwargs={"input_ids": torch.zeros(1, tokens, dtype=torch.long, device="meta")})
    assert result.uncounted == ()
    experts = result.layer("model.layers.0.mlp.experts")
    # each token runs through 2 of 4 experts: gate and up (256 -> 2 x 512) and down (512 -> 256)
    assert experts.total.macs == tokens * 2 * (256 * 2 * 512 + 512 * 256)
    assert experts.params == 4 * (2 * 512 * 256 + 256 * 512)
    assert "experts" in result.table(layer="model.layers.0", depth=2)


class Chain(nn.Module):
    """10,000 small modules called one after the other."""

    def __init__(self, n: int = 10_000) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) if i % 2 else nn.ReLU() for i in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_no_hooks_remain_after_profiling_ten_thousand_modules():
    model = Chain()
    result = profile(model, inputs=(torch.rand(1, 4),))
    assert result.total_macs == 5_000 * (1 * 4 * 4)
    assert len(result.layers) == 1 + 1 + 10_000
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                  "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    assert all(not getattr(m, d) for m in model.modules() for d in hook_dicts)
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks
    assert_tree_invariant(result.root)


def test_a_recurrent_loop_over_one_shared_module():
    cell = nn.GRUCell(8, 8)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h = torch.zeros(2, 8)
            for _ in range(100):
                h = self.cell(x, h)
            return h

    result = profile(Loop(), inputs=(torch.rand(2, 8),))
    assert result.layer("cell").calls == 100
    # per step and sequence: GRU cell matmul 3 * 8 * (8 + 8), thop's 13 * 8 elementwise with bias
    assert result.total_macs == 100 * 2 * (3 * 8 * (8 + 8) + 13 * 8)
