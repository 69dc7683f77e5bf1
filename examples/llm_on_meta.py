"""Count a LLaMA-70B-shaped model without allocating its weights: everything on the meta device.

Counting needs shapes, not data. The model is built under ``torch.device("meta")`` (70.6 billion
parameters, no memory for them), fed 4096 token ids, and profiled; the exact count is printed
next to the usual 6·N·T estimate of training FLOPs. Then one training step of it in bfloat16 (the
forward, the model's own loss, the backward) with its exact FLOPs next to 6·N·T and PaLM's
6·N·T + 12·n_layer·d_model·T², and the memory the step needs with AdamW. A Mixtral-shaped
Mixture-of-Experts model follows, with its expert layers in the table.

    python examples/llm_on_meta.py            # LLaMA-70B shape, 4096 tokens, then Mixtral-8x7B shape
"""

from __future__ import annotations

import resource

import torch
import transformers

from profiler import profile, profile_training


def llama_70b_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256,
    )


def mixtral_8x7b_config() -> transformers.MixtralConfig:
    return transformers.MixtralConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
    )


def count_on_meta(model_class, config, tokens: int, dtype: torch.dtype = torch.float32):
    """Build ``model_class(config)`` on the meta device and profile one forward of ``tokens`` ids."""
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    return profile(model, kwargs={"input_ids": ids})


def train_on_meta(model_class, config, tokens: int, dtype: torch.dtype = torch.bfloat16):
    """One training step of ``model_class(config)`` on the meta device: ``tokens`` ids as input and
    labels (the model computes its own loss), AdamW's state in the memory."""
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    return profile_training(model, kwargs={"input_ids": ids, "labels": ids}, optimizer="adamw")


def main() -> None:
    tokens = 4096
    result = count_on_meta(transformers.LlamaForCausalLM, llama_70b_config(), tokens)
    print(result.table(depth=3))
    print(result.table(sort_by="flops", top=8, columns=("layer", "type", "output_shape", "flops", "macs_pct")))

    embedding = result.layer("model.embed_tokens").params
    n = result.total_params - embedding
    print(f"\nparams: {result.total_params:,} ({n:,} outside the embedding)")
    print(f"forward, exact:          {result.total_flops:,} FLOPs ({result.matmul_flops:,} in matmuls)")
    print(f"forward, 2·N·T estimate: {2 * n * tokens:,} FLOPs")
    print(f"training ≈ 3 × forward:  {3 * result.matmul_flops:,} FLOPs; 6·N·T: {6 * n * tokens:,}")
    print("(the estimate leaves out attention's L x L matmuls, which grow with the square of the context)")

    config = llama_70b_config()
    step = train_on_meta(transformers.LlamaForCausalLM, config, tokens)
    layers, d = config.num_hidden_layers, config.hidden_size
    six_nt = 6 * n * tokens
    palm = six_nt + 12 * layers * d * tokens**2
    step_matmuls = step.matmul_flops + step.backward_matmul_flops
    print(f"\ntraining step, exact:     {step.training_flops:,} FLOPs ({step_matmuls:,} in matmuls)")
    print(f"6·N·T:                    {six_nt:,} ({step_matmuls / six_nt:.3f}x of it in matmuls)")
    print(f"PaLM, + 12·n_layer·d·T²:  {palm:,} ({step_matmuls / palm:.6f}x)")
    norms = sum(layer.params for layer in step.layers if layer.type == "LlamaRMSNorm")
    print(f"the matmuls are exactly 6·T·(N - {norms:,} norm weights) + 12·n_layer·d·T²: "
          f"{step_matmuls == 6 * (n - norms) * tokens + 12 * layers * d * tokens**2}")
    print("(6·N·T takes every parameter outside the embedding for a matmul weight, used three times\n"
          " per token; attention's score and weighted-sum matmuls grow with T², which it leaves out)")
    print(f"memory of the step with AdamW, bfloat16:\n{step.memory}")

    # Mixture of Experts: the experts of each layer are one module holding [experts, out, in] weights;
    # grouped matmuls need bfloat16 on the meta device, as on GPUs
    moe = count_on_meta(transformers.MixtralForCausalLM, mixtral_8x7b_config(), tokens, torch.bfloat16)
    print()
    print(moe.table(layer="model.layers.0", columns=("layer", "type", "params", "macs", "macs_pct")))
    print(f"Mixtral-8x7B shape: {moe.total_params:,} params, {moe.total_macs:,} MACs for {tokens} tokens")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
