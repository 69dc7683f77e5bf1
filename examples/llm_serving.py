"""What serving a language model costs: the prompt's prefill, then one decode step per token.

A small LLaMA-shaped model (grouped-query attention, random weights) generates 24 tokens on the
CPU: the phase table shows each step's FLOPs, bytes and KV cache, and the decode FLOPs per token
are printed next to Kaplan et al.'s 2·N + 2·n_layer·n_ctx·d_attn. Then a LLaMA-7B-shaped model
in bfloat16 on the meta device (no memory for its 6.7 billion weights) takes one decode step at
a context of 1024 tokens: its roofline time on an H100 next to the bound every decode step at
batch 1 hits, (weight bytes + KV-cache bytes) / memory bandwidth.

    python examples/llm_serving.py
"""

from __future__ import annotations

import torch
import transformers

from profiler import DEVICES, profile_generation
from profiler.units import format_bytes, format_seconds


def small_llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=256, attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def llama_7b_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000,
    )


def kaplan(n: int, layers: int, context: float, d_attn: int) -> float:
    """Kaplan et al. (2020), Table 1: forward FLOPs per token, 2·N + 2·n_layer·n_ctx·d_attn."""
    return 2 * n + 2 * layers * context * d_attn


def main() -> None:
    model = small_llama()
    config = model.config
    prompt = torch.randint(0, config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    result = profile_generation(model, prompt, max_new_tokens=24)
    print(result.table())
    print()
    print(result.layer_table(depth=3, columns=("layer", "type", "flops", "bytes", "intensity")))

    n = result.total_params - config.vocab_size * config.hidden_size  # the embedding is a lookup
    d_attn = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    layers = config.num_hidden_layers
    context = sum(s.context for s in result.steps) / len(result.steps)
    matmuls = sum(s.matmul_flops for s in result.steps) / len(result.steps)
    print(f"\ndecode FLOPs per token, measured:           {result.flops_per_token:,.0f} ({matmuls:,.0f} in matmuls)")
    print(f"Kaplan et al., 2·N + 2·n_layer·n_ctx·d_attn: {kaplan(n, layers, context, d_attn):,.0f} (mean n_ctx {context})")
    print(f"with attention·V, 2·N + 4·n_layer·n_ctx·d_attn: {kaplan(n, layers, 2 * context, d_attn):,.0f}")
    print("(Kaplan counts Q·Kᵀ but not the attention-weighted sum of the values; N here holds the norms'\n"
          "weights, which do no matmul, and the measured total adds norms, rotary embeddings, SiLU, softmax)")
    print(f"KV cache after {result.tokens.shape[1]} new tokens: {format_bytes(result.kv_cache_bytes)}")

    config = llama_7b_config()
    with torch.device("meta"):
        big = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    context = 1024
    ids = torch.zeros((1, context - 1), dtype=torch.long, device="meta")
    step = profile_generation(big, ids, max_new_tokens=2)
    h100 = DEVICES["H100-SXM5"]
    roofline = step.roofline(h100)
    print()
    print(roofline.decode.table(depth=2))
    weights = 2 * sum(p.numel() for p in big.parameters())
    kv = step.kv_cache_bytes
    bound = (weights + kv) / h100.bandwidth
    print(f"\nLLaMA-7B shape, bfloat16, batch 1, context {context}, on {h100.name}:")
    print(f"  roofline time per token:             {format_seconds(roofline.time_per_token)} "
          f"({roofline.tokens_per_second:,.0f} tokens/s)")
    print(f"  (weights {format_bytes(weights)} + KV cache {format_bytes(kv)}) / {h100.bandwidth / 1e12:.2f} TB/s: "
          f"{format_seconds(bound)}")
    print("  (the estimate reads one embedding row per token, not the whole table, hence a little less)")


if __name__ == "__main__":
    main()
