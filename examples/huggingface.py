"""Profile Hugging Face models built from configs (random weights, nothing downloaded).

GPT-2's attention is written with torch functions inside ``forward`` and its projections are
``Conv1D`` modules calling ``addmm``: both are counted, in the rows of the modules that call them.

    python examples/huggingface.py
"""

from __future__ import annotations

import torch
import transformers

from profiler import profile


def main() -> None:
    config = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, attn_implementation="eager")
    gpt2 = transformers.GPT2LMHeadModel(config)
    ids = torch.zeros(1, 64, dtype=torch.long)
    result = profile(gpt2, kwargs={"input_ids": ids})
    print(result.table(depth=4))

    sdpa = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, attn_implementation="sdpa"))
    print(f"\neager attention: {result.total_macs:,} MACs; sdpa: {profile(sdpa, kwargs={'input_ids': ids}).total_macs:,} MACs")

    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                                          intermediate_size=512))
    mask = torch.ones(1, 64, dtype=torch.long)
    bert_result = profile(bert, kwargs={"input_ids": ids, "attention_mask": mask})
    print(f"BERT (2 layers): {bert_result.total_macs:,} MACs, {bert_result.total_params:,} params")


if __name__ == "__main__":
    main()
