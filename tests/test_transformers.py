"""Transformers end to end: torch's nn.Transformer family, the seed model, Hugging Face models.

Every model here is checked against ``torch.utils.flop_counter.FlopCounterMode`` (FCM), run
with grad enabled and the math attention kernel (it counts 0 for the fused CPU kernels and for
the no-grad fast paths), and against closed forms where the shapes make one short enough.
Hugging Face models are built from small configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import transformers
from conftest import counted, flop_counter_flops
from torch import nn

from profiler import profile


def not_run(result, prefix: str = "") -> list[str]:
    return [layer.name for layer in result.layers if layer.name.startswith(prefix) and layer.status == "not run"]


# --------------------------------------------------------------------------- torch's nn.Transformer family

D, HEADS, FF, BATCH, SRC, TGT = 32, 4, 64, 3, 10, 6


def mha_macs(tokens_q: int, tokens_kv: int, q_len: int, kv_len: int) -> int:
    """nn.MultiheadAttention with embed D: projections, then scores and weighted sum per head."""
    return tokens_q * D * D * 2 + tokens_kv * D * D * 2 + BATCH * HEADS * q_len * kv_len * (D // HEADS) * 2


def encoder_layer_macs() -> int:
    """Self-attention, the two feed-forward Linears and two LayerNorms (thop: 4 MACs per element)."""
    tokens = BATCH * SRC
    return mha_macs(tokens, tokens, SRC, SRC) + tokens * D * FF * 2 + 2 * tokens * D * 4


def decoder_layer_macs() -> int:
    """Self-attention, cross-attention over the memory, feed-forward and three LayerNorms."""
    tokens, memory = BATCH * TGT, BATCH * SRC
    return (mha_macs(tokens, tokens, TGT, TGT) + mha_macs(tokens, memory, TGT, SRC)
            + tokens * D * FF * 2 + 3 * tokens * D * 4)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_transformer_encoder(batch_first, training):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).train(training)
    x = torch.randn((BATCH, SRC, D) if batch_first else (SRC, BATCH, D))

    result = counted(model, (x,))

    assert model.training is training  # restored
    assert not_run(result, "layers.") == []  # the fused fast path would skip every submodule
    assert result.layer("layers.0.self_attn").status == "counted"
    assert result.total_macs == 2 * encoder_layer_macs()
    assert result.matmul_flops == flop_counter_flops(model, (x,))


def test_transformer_encoder_nested_tensor_padding_mask():
    """The nested-tensor path (eval, padding mask) is not taken while profiling: all of it counts."""
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, HEADS, FF, batch_first=True), 2).eval()
    x = torch.randn(BATCH, SRC, D)
    mask = torch.zeros(BATCH, SRC, dtype=torch.bool)
    mask[0, 7:] = True

    result = counted(model, (x,), {"src_key_padding_mask": mask})

    assert not_run(result, "layers.") == []
    assert result.total_macs == 2 * encoder_layer_macs()
    assert result.matmul_flops == flop_counter_flops(model, (x,), {"src_key_padding_mask": mask})


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_transformer_decoder(training):
    torch.manual_seed(0)
    model = nn.TransformerDecoder(nn.TransformerDecoderLayer(D, HEADS, FF, batch_first=True), 2).train(training)
    tgt, memory = torch.randn(BATCH, TGT, D), torch.randn(BATCH, SRC, D)
    causal = nn.Transformer.generate_square_subsequent_mask(TGT)

    result = counted(model, (tgt, memory), {"tgt_mask": causal, "tgt_is_causal": True})

    assert not_run(result, "layers.") == []
    assert result.total_macs == 2 * decoder_layer_macs()
    assert result.matmul_flops == flop_counter_flops(model, (tgt, memory), {"tgt_mask": causal, "tgt_is_causal": True})


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_transformer(training):
    torch.manual_seed(0)
    model = nn.Transformer(D, HEADS, 2, 2, FF, batch_first=True).train(training)
    src, tgt = torch.randn(BATCH, SRC, D), torch.randn(BATCH, TGT, D)

    result = counted(model, (src, tgt))

    assert not_run(result, "encoder.layers.") == []
    assert not_run(result, "decoder.layers.") == []
    final_norms = BATCH * SRC * D * 4 + BATCH * TGT * D * 4
    assert result.total_macs == 2 * encoder_layer_macs() + 2 * decoder_layer_macs() + final_norms
    assert result.matmul_flops == flop_counter_flops(model, (src, tgt))


# --------------------------------------------------------------------------- the seed model

# embed 64, 4 heads (head_dim 16), input (seq 10, batch 32): 320 tokens per block
SEED_BLOCK_MACS = (
    320 * 64 * 64 * 4  # q, k, v and out projections
    + 32 * 4 * 10 * 10 * 16 * 2  # scores and weighted sum
    + 320 * 64 * 128 * 2  # the two MLP Linears
)
SEED_PARAMS_PER_BLOCK = (3 * 64 * 64 + 3 * 64) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)


def test_seed_model(seed):
    model, x = seed

    result = counted(model, (x,))

    assert SEED_BLOCK_MACS * 2 == 21_790_720
    assert result.total_macs == SEED_BLOCK_MACS * 2
    assert result.matmul_flops == 43_581_440 == 2 * SEED_BLOCK_MACS * 2
    assert result.total_params == 66_432 == SEED_PARAMS_PER_BLOCK * 2
    assert tuple(result) == (21_790_720, 66_432)
    assert result.matmul_flops == flop_counter_flops(model, (x,))


def test_seed_model_thop_is_wrong(seed):
    import thop

    model, x = seed
    thop_macs, thop_params = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    assert (int(thop_macs), int(thop_params)) == (10_485_760, 33_152)
    assert int(thop_macs) == 2 * 320 * 64 * 128 * 2  # only the MLP Linears
    assert list(model.buffers()) == []  # thop ran on a copy
    result = profile(model, (x,))
    assert result.total_macs - int(thop_macs) == 2 * (320 * 64 * 64 * 4 + 32 * 4 * 10 * 10 * 16 * 2)


# --------------------------------------------------------------------------- Hugging Face models

transformers.logging.set_verbosity_error()

IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, 16, dtype=torch.long)
MASK[1, 12:] = 0


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel, cfg, {"input_ids": IDS}


def bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=100, max_position_embeddings=64)
    return transformers.BertModel, cfg, {"input_ids": IDS, "attention_mask": MASK}


def llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, max_position_embeddings=64)
    return transformers.LlamaForCausalLM, cfg, {"input_ids": IDS}


def vit():
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                 image_size=32, patch_size=8)
    pixels = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    return transformers.ViTModel, cfg, {"pixel_values": pixels}


def t5():
    cfg = transformers.T5Config(num_layers=2, num_decoder_layers=2, d_model=64, d_kv=16, num_heads=4, d_ff=128,
                                vocab_size=100)
    return transformers.T5Model, cfg, {"input_ids": IDS, "decoder_input_ids": IDS[:, :8]}


HF_MODELS = {"gpt2": gpt2, "bert": bert, "llama": llama, "vit": vit, "t5": t5}


def build(name: str, attn_implementation: str):
    """A fresh model from a fresh config, random weights, eval mode, and its forward kwargs."""
    cls, cfg, kwargs = HF_MODELS[name]()
    torch.manual_seed(0)
    model = cls._from_config(cfg, attn_implementation=attn_implementation).eval()
    assert model.config._attn_implementation == attn_implementation
    return model, kwargs


@functools.cache
def profiled(name: str, attn_implementation: str):
    """``(model, kwargs, result)``, built and profiled once per session (tests only read them)."""
    model, kwargs = build(name, attn_implementation)
    return model, kwargs, counted(model, kwargs=kwargs)


def functions_called(result) -> set[str]:
    return {f.function.rpartition(".")[2] for layer in result.layers for f in layer.functions}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_eager_and_sdpa_give_the_same_macs(name):
    eager, sdpa = profiled(name, "eager")[2], profiled(name, "sdpa")[2]
    # the two really run different attention code
    assert "scaled_dot_product_attention" not in functions_called(eager)
    assert "scaled_dot_product_attention" in functions_called(sdpa)
    assert sdpa.total_macs == eager.total_macs
    assert sdpa.matmul_flops == eager.matmul_flops
    assert sdpa.total_params == eager.total_params


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_matmul_flops_match_flop_counter(name, impl):
    model, kwargs, result = profiled(name, impl)
    assert result.matmul_flops == flop_counter_flops(model, kwargs=kwargs)


def test_gpt2_conv1d_is_counted_through_addmm():
    result = profiled("gpt2", "eager")[2]
    tokens, d = 2 * 16, 64
    for child, (d_in, d_out) in {"c_attn": (d, 3 * d), "c_proj": (d, d)}.items():
        layer = result.layer(f"transformer.h.0.attn.{child}")
        assert layer.type == "Conv1D"
        assert [(f.function.rpartition(".")[2], f.calls) for f in layer.functions] == [("addmm", 1)]
        assert layer.own.macs == tokens * d_in * d_out
    assert result.layer("transformer.h.0.mlp.c_fc").own.macs == tokens * d * 4 * d
    assert result.layer("transformer.h.0.mlp.c_proj").own.macs == tokens * 4 * d * d


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_llama_gqa_attention_counts(impl):
    """LLaMA with 2 key/value heads for 4 query heads: k/v projections are half size; the
    attention is Hq x L x S x (head_dim + head_dim) whichever kernel runs."""
    model, _, result = profiled("llama", impl)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    tokens, d, hq, hkv, hd, t = 2 * 16, 64, 4, 2, 16, 16
    assert result.layer("model.layers.0.self_attn").own.macs == 2 * hq * t * t * (hd + hd)
    assert result.layer("model.layers.0.self_attn.q_proj").own.macs == tokens * d * hq * hd
    assert result.layer("model.layers.0.self_attn.k_proj").own.macs == tokens * d * hkv * hd
    assert result.layer("model.layers.0.self_attn.v_proj").own.macs == tokens * d * hkv * hd
    assert result.layer("model.layers.0.mlp.act_fn").own.flops == tokens * 128 * 4  # SiLU: x * sigmoid(x)


# --------------------------------------------------------------------------- attention cost grows as T^2


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_gpt2_attention_grows_quadratically_projections_linearly(impl):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=256)
    torch.manual_seed(0)
    model = transformers.GPT2Model._from_config(cfg, attn_implementation=impl).eval()
    attention, projections = [], []
    for length in (64, 128, 256):
        result = counted(model, kwargs={"input_ids": torch.zeros(1, length, dtype=torch.long)})
        blocks = [result.layer(f"h.{i}.attn") for i in range(2)]
        attention.append(sum(b.own.macs for b in blocks))  # not the Conv1D children
        projections.append(sum(c.total.macs for b in blocks for c in b.children))
        # scores and weighted sum: 2 * heads * T * T * head_dim per block
        assert attention[-1] == 2 * (2 * 4 * length * length * 16)
        assert projections[-1] == 2 * (length * 64 * 3 * 64 + length * 64 * 64)
    assert [b / a for a, b in zip(attention, attention[1:])] == [4.0, 4.0]
    assert [b / a for a, b in zip(projections, projections[1:])] == [2.0, 2.0]


# --------------------------------------------------------------------------- GPT-2 small, on the meta device


def test_gpt2_small_on_meta_device_closed_form():
    n_layer, d, heads, vocab, t = 12, 768, 12, 50257, 128
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=d, n_head=heads, vocab_size=vocab, n_positions=1024)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.zeros(1, t, dtype=torch.long, device="meta")

    result = counted(model, kwargs={"input_ids": ids})

    # weights of the matmuls each token goes through: c_attn, attn c_proj, c_fc, mlp c_proj; LM head
    n_matmul_params = n_layer * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + d * vocab
    attention = n_layer * 2 * heads * t * t * (d // heads)  # scores and weighted sum
    matmul_macs = n_matmul_params * t + attention
    layer_norm_macs = (2 * n_layer + 1) * t * d * 4  # thop: 4 per element, affine
    assert result.matmul_flops == 2 * matmul_macs
    assert result.total_macs == matmul_macs + layer_norm_macs
    # token and position embeddings; per layer two LayerNorms and four Conv1D with biases; ln_f.
    # The LM head is tied to the token embedding, so it adds nothing.
    per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert result.total_params == vocab * d + 1024 * d + n_layer * per_layer + 2 * d
