"""profile_generation: the prefill and each decode step against profile(), FlopCounterMode, the
KV cache's closed form and Hugging Face's own greedy generate()."""

from __future__ import annotations

import gc
import json
import sys
import warnings

import pytest
import torch
import transformers
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from profiler import DEVICES, GenerationResult, UncountedWarning, profile, profile_generation
from profiler.generation import MAX_PHASE_ROWS, cache_tensors

PROMPT = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
NEW = 5


def llama(attention: str = "eager") -> nn.Module:
    """Two layers, grouped-query attention: 4 query heads share 2 key/value heads of 16."""
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, max_position_embeddings=64,
                                   attn_implementation=attention)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2(attention: str = "eager") -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                  attn_implementation=attention)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


MODELS = [pytest.param(llama, id="llama-gqa"), pytest.param(gpt2, id="gpt2")]


def generated(model: nn.Module, prompt: torch.Tensor = PROMPT, new: int = NEW, **kwargs) -> GenerationResult:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedWarning)
        return profile_generation(model, prompt, max_new_tokens=new, **kwargs)


def shape(model: nn.Module) -> tuple[int, int, int, int]:
    """(layers, query heads, key/value heads, head dim) from the model's config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, getattr(cfg, "num_key_value_heads", None) or heads, cfg.hidden_size // heads


def generate_per_forward(model: nn.Module, prompt: torch.Tensor, new: int, **kwargs) -> tuple[torch.Tensor, list[int]]:
    """generate(do_sample=False)'s new tokens, and FlopCounterMode's total around each forward it runs."""
    totals: list[int] = []
    counters: list[FlopCounterMode] = []

    def enter(module, args, kwargs_):
        counters.append(FlopCounterMode(display=False))
        counters[-1].__enter__()

    def leave(module, args, output):
        counter = counters.pop()
        counter.__exit__(None, None, None)
        totals.append(counter.get_total_flops())

    handles = [model.register_forward_pre_hook(enter, with_kwargs=True), model.register_forward_hook(leave)]
    try:
        out = model.generate(prompt, do_sample=False, max_new_tokens=new, eos_token_id=None, pad_token_id=0,
                             **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return out[:, prompt.shape[1]:], totals


@pytest.mark.parametrize("make", MODELS)
def test_the_prefill_counts_as_profile_of_the_forward_generate_runs(make):
    """The prefill is the prompt's forward with logits_to_keep=1, as generate runs it;
    full_logits=True is the plain call, every prompt position's logits."""
    model = make()
    positions = {"position_ids": torch.arange(PROMPT.shape[1]).repeat(PROMPT.shape[0], 1)}  # from a mask of ones
    for full, keep in ((False, {"logits_to_keep": 1}), (True, {})):
        result = generated(model, full_logits=full)
        alone = profile(model, kwargs={"input_ids": PROMPT, **positions, **keep})
        assert (result.prefill.total_macs, result.prefill.total_flops, result.prefill.matmul_flops) == (
            alone.total_macs, alone.total_flops, alone.matmul_flops)
        assert [(l.name, l.total.flops) for l in result.prefill.layers] == [
            (l.name, l.total.flops) for l in alone.layers]


@pytest.mark.parametrize("make", MODELS)
def test_every_step_matches_flop_counter_mode_and_generate(make):
    model = make()
    result = generated(model)
    tokens, flops = generate_per_forward(model, PROMPT, NEW)
    assert [p.matmul_flops for p in result.phases] == flops
    assert torch.equal(result.tokens, tokens)
    assert len(result.steps) == NEW - 1
    assert [s.context for s in result.phases] == list(range(PROMPT.shape[1], PROMPT.shape[1] + NEW))


@pytest.mark.parametrize("make", MODELS)
def test_a_decode_step_is_2n_plus_the_attention_over_the_context(make):
    """Per token: 2 FLOPs per weight of every matmul (lm_head included, GPT-2's Conv1D too), and
    Q·Kᵀ and attention·V over the context: 2 · 2 · layers · context · heads · head dim."""
    model = make()
    layers, heads, _, head_dim = shape(model)
    weights = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (nn.Linear, transformers.pytorch_utils.Conv1D)))
    result = generated(model)
    batch = PROMPT.shape[0]
    for step in result.steps:
        attention = 2 * 2 * layers * step.context * heads * head_dim
        assert step.matmul_flops == batch * (2 * weights + attention)
    growth = {b.matmul_flops - a.matmul_flops for a, b in zip(result.steps, result.steps[1:])}
    assert growth == {batch * 2 * 2 * layers * heads * head_dim}  # linear in the context
    assert result.flops_per_token == sum(s.flops for s in result.steps) / (len(result.steps) * batch)


@pytest.mark.parametrize("make", MODELS)
def test_the_kv_cache_bytes_are_the_closed_form_and_what_a_cache_holds(make):
    model = make()
    layers, _, kv_heads, head_dim = shape(model)
    result = generated(model)
    batch, prompt = PROMPT.shape
    for phase in result.phases:
        assert phase.kv_cache_bytes == 2 * layers * batch * phase.context * kv_heads * head_dim * 4
    cache = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.cat([PROMPT, result.tokens[:, :-1]], dim=1), cache=cache, use_cache=True)
    assert sum(t.nbytes for t in cache_tensors(cache)) == result.kv_cache_bytes


def test_a_step_writes_only_its_new_keys_and_values():
    """The cache is taken as preallocated: DynamicCache's concatenation is not counted."""
    model = llama()
    layers, _, kv_heads, head_dim = shape(model)
    result = generated(model)
    batch = PROMPT.shape[0]
    for n, phase in enumerate(result.phases):
        writes = [r for r in result.step(n)._parts[1] if r.function == "kv_cache.update"]
        assert len(writes) == layers
        new = 2 * batch * phase.tokens * kv_heads * head_dim * 4
        assert {(r.bytes_read, r.bytes_written) for r in writes} == {(new, new)}
        if n:  # a decode step's concatenations (rotary's halves) are of its one token, not the cache
            one_layers_keys = batch * phase.context * kv_heads * head_dim * 4
            cats = [r for r in result.step(n)._parts[1] if r.function == "torch.cat"]
            assert cats and max(r.bytes_written for r in cats) < one_layers_keys


@pytest.mark.parametrize("make", MODELS)
def test_sdpa_and_eager_attention_count_alike(make):
    """The matmul-like work and the cache; the elementwise FLOPs differ by what eager attention
    spells out (the mask's add, the scaling) that the SDPA kernel's rule counts its own way."""
    eager, sdpa = generated(make("eager")), generated(make("sdpa"))
    assert [(p.macs, p.matmul_flops, p.kv_cache_bytes) for p in eager.phases] == [
        (p.macs, p.matmul_flops, p.kv_cache_bytes) for p in sdpa.phases]
    assert torch.equal(eager.tokens, sdpa.tokens)


def test_the_decode_layers_are_every_steps_calls_together():
    model = llama()
    result = generated(model)
    decoded = result.decode
    assert decoded.layer("model.layers.0.self_attn.q_proj").calls == NEW - 1
    assert decoded.total_flops == sum(s.flops for s in result.steps)
    assert decoded.total_bytes == sum(s.bytes for s in result.steps)
    assert result.total_flops == result.prefill.total_flops + decoded.total_flops
    assert "q_proj ×4" in result.layer_table(depth=5)


def test_the_attention_mask_grows_as_generate_grows_it():
    model = llama()
    mask = torch.ones_like(PROMPT)
    result = generated(model, kwargs={"attention_mask": mask})
    expected = model.generate(PROMPT, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=None,
                              pad_token_id=0)
    assert torch.equal(result.tokens, expected[:, PROMPT.shape[1]:])
    assert [p.matmul_flops for p in result.phases] == [p.matmul_flops for p in generated(model).phases]


class TupleCacheLM(nn.Module):
    """A causal LM of its own: one attention head, a cache of (key, value) tuples it concatenates."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.embed, self.qkv, self.head = nn.Embedding(vocab, d), nn.Linear(d, 3 * d), nn.Linear(d, vocab)

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        q, k, v = self.qkv(self.embed(input_ids)).chunk(3, dim=-1)
        if past_key_values is not None:
            k, v = torch.cat([past_key_values[0], k], dim=1), torch.cat([past_key_values[1], v], dim=1)
        out = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v  # no mask: every position sees all
        return self.head(out), (k, v)


def test_a_model_with_a_tuple_cache_of_its_own():
    model = TupleCacheLM().eval()
    prompt = torch.tensor([[1, 2, 3, 4]])
    result = generated(model, prompt, new=3)
    d = 16
    for phase in result.phases:
        assert phase.kv_cache_bytes == 2 * phase.context * d * 4
        n, ctx = phase.tokens, phase.context
        assert phase.matmul_flops == 2 * n * (d * 3 * d + d * 50) + 2 * 2 * n * ctx * d
    assert result.kv_cache_bytes == 2 * (4 + 2) * d * 4


def test_the_model_comes_back_as_it_was():
    model = llama().train()
    before = snapshot(model)
    generated(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("call, message", [
    (lambda m: profile_generation(m, PROMPT.float(), max_new_tokens=2), "integer tensor of token ids"),
    (lambda m: profile_generation(m, PROMPT[:, :0], max_new_tokens=2), "non-empty"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=True), "max_new_tokens must be a positive integer"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=2, kwargs={"use_cache": False}), "may not set use_cache"),
    (lambda m: profile_generation(nn.Linear(3, 3), PROMPT, max_new_tokens=2),
     r"takes its cache by the name past_key_values .*Linear.forward takes \(input\)"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=2, kwargs={"position_ids": PROMPT}),
     "may not set position_ids: profile_generation sets the ids, the cache and use_cache each step"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=2, kwargs={"logits_to_keep": 0}),
     "may not set logits_to_keep: .*full_logits=True"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=2, full_logits=1), "full_logits must be True or False"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=64, kwargs={}),
     "a prompt of 7 tokens and 64 new ones need 70 positions; LlamaForCausalLM's config has 64"),
    (lambda m: profile_generation(m, PROMPT, max_new_tokens=2, kwargs={"attention_mask": PROMPT[:, :3]}),
     r"attention_mask must be a tensor of the prompt's shape \[2, 7\], not \[2, 3\]"),
])
def test_bad_input_is_refused_with_a_message(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(llama())


def test_the_phase_table_groups_many_steps_and_the_report_is_json():
    model = llama()
    new = 2 * MAX_PHASE_ROWS + 3
    result = generated(model, PROMPT[:, :3], new=new)
    text = result.table(units="exact")
    body = text.splitlines()[2:]
    rows = [line for line in body if line.startswith("decode")]
    assert len(rows) <= MAX_PHASE_ROWS
    assert sum(int(line.split("×")[1].split()[0]) if "×" in line else 1 for line in rows) == new - 1
    total = next(line for line in body if line.startswith("Total"))
    assert f"{result.total_flops:,}" in total.split()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["totals"]["flops"] == result.total_flops
    assert [p["context"] for p in data["phases"]] == [p.context for p in result.phases]
    assert "<table>" in result.html()


def test_roofline_per_token_and_tokens_per_second():
    model = llama()
    result = generated(model)
    roofline = result.roofline("H100-SXM5", dtype="float32")
    assert roofline.step_times == tuple(result.step(n).roofline("H100-SXM5", "float32").time
                                        for n in range(1, NEW))
    assert roofline.decode.time == pytest.approx(sum(roofline.step_times), rel=1e-12)  # the steps' layers together
    assert roofline.time_per_token == sum(roofline.step_times) / (NEW - 1)
    assert roofline.tokens_per_second == PROMPT.shape[0] / roofline.time_per_token
    assert roofline.time == pytest.approx(roofline.prefill_time + sum(roofline.step_times), rel=1e-12)
    assert "Est. time" in roofline.table()
    data = json.loads(json.dumps(roofline.to_dict()))
    assert [p["roofline_time"] for p in data["phases"]] == list(roofline.phase_times)
    assert data["roofline"]["time_per_token"] == roofline.time_per_token
    assert (data["roofline"]["device"], data["roofline"]["dtype"]) == ("H100-SXM5", "float32")
    assert "Est. time" in roofline.html()


def test_a_7b_decode_step_on_meta_is_weights_and_cache_over_bandwidth():
    """LLaMA-7B's shape in bfloat16 at batch 1, context 1024: a decode step reads every weight
    and the whole KV cache, so it is memory-bound at (weights + cache) / bandwidth."""
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    context = 1024
    result = profile_generation(model, torch.zeros((1, context - 1), dtype=torch.long, device="meta"), max_new_tokens=2)
    step = result.steps[0]
    assert step.context == context
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * 1 * context * cfg.num_key_value_heads * head_dim * 2
    assert step.kv_cache_bytes == kv_bytes
    weight_bytes = 2 * sum(p.numel() for p in model.parameters())
    bound = (weight_bytes + kv_bytes) / DEVICES["H100-SXM5"].bandwidth
    per_token = result.roofline("H100-SXM5").time_per_token
    assert abs(per_token - bound) / bound < 0.05
    assert result.roofline("H100-SXM5").decode.bound == "memory"


# Left-padded prompts: row 0 unpadded, the others with 1, 2 and 3 pads in front (pad id 0).
PADDED = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(1))
PADDED_MASK = (torch.arange(6) >= torch.tensor([[0], [1], [2], [3]])).long()
PADDED = PADDED * PADDED_MASK


def gpt_neo() -> nn.Module:
    cfg = transformers.GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=100,
                                    max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
                                    window_size=4)
    torch.manual_seed(0)
    return transformers.GPTNeoForCausalLM(cfg).eval()


def with_loud_positions(make, embedding: str):
    """The model with its learned position embeddings scaled up, so that a token at the wrong
    position changes what comes next."""
    def build() -> nn.Module:
        model = make()
        with torch.no_grad():
            model.get_submodule(embedding).weight.mul_(50)
        return model
    return build


class TestPositionsAsGenerateDerivesThem:
    """Left padding: generate counts each row's positions from its mask; so does profile_generation."""

    @pytest.mark.parametrize("make", [
        pytest.param(with_loud_positions(gpt2, "transformer.wpe"), id="gpt2-absolute"),
        pytest.param(with_loud_positions(gpt_neo, "transformer.wpe"), id="gpt-neo-absolute"),
        pytest.param(llama, id="llama-rotary"),
    ])
    def test_left_padded_prompts_give_generates_tokens(self, make):
        model = make()
        result = generated(model, PADDED, kwargs={"attention_mask": PADDED_MASK})
        tokens, flops = generate_per_forward(model, PADDED, NEW, attention_mask=PADDED_MASK)
        assert torch.equal(result.tokens, tokens)
        assert [p.matmul_flops for p in result.phases] == flops

    def test_a_mask_of_ones_is_dropped_as_generate_drops_it(self):
        model = llama()
        plain = generated(model)
        masked = generated(model, kwargs={"attention_mask": torch.ones_like(PROMPT)})
        assert [(p.flops, p.bytes) for p in masked.phases] == [(p.flops, p.bytes) for p in plain.phases]


class TestThePrefillsLogits:
    """generate passes logits_to_keep=1: the LM head runs on the last prompt position only."""

    @pytest.mark.parametrize("make", MODELS)
    def test_the_prefill_is_generates_first_forward(self, make):
        model = make()
        result = generated(model)
        _, flops = generate_per_forward(model, PROMPT, 1)
        assert [result.prefill.matmul_flops] == flops
        assert result.prefill_logits == "last"
        assert "last prompt position only, as generate does" in result.table()

    @pytest.mark.parametrize("make", MODELS)
    def test_full_logits_adds_the_head_at_every_other_position(self, make):
        model = make()
        last, full = generated(model), generated(model, full_logits=True)
        batch, prompt = PROMPT.shape
        d, vocab = model.config.hidden_size, model.config.vocab_size
        assert full.prefill.matmul_flops - last.prefill.matmul_flops == batch * 2 * (prompt - 1) * d * vocab
        assert full.prefill.total_macs - last.prefill.total_macs == batch * (prompt - 1) * d * vocab
        assert [s.flops for s in full.steps] == [s.flops for s in last.steps]
        assert torch.equal(full.tokens, last.tokens)
        assert full.prefill_logits == "all" and "full_logits=True" in full.table()
        assert full.to_dict()["totals"]["prefill_logits"] == "all"

    def test_a_forward_without_logits_to_keep_says_so(self):
        result = generated(TupleCacheLM().eval(), torch.tensor([[1, 2, 3]]), new=2)
        assert result.prefill_logits == "all"
        assert "TupleCacheLM.forward takes no logits_to_keep" in result.table()


def bart_config(cls):
    return cls(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
               pad_token_id=1, decoder_start_token_id=2)


def t5_config(cls):
    return cls(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


ENCODER_DECODERS = [
    pytest.param(transformers.BartForConditionalGeneration, bart_config(transformers.BartConfig), id="bart"),
    pytest.param(transformers.MBartForConditionalGeneration, bart_config(transformers.MBartConfig), id="mbart"),
    pytest.param(transformers.PegasusForConditionalGeneration, bart_config(transformers.PegasusConfig), id="pegasus"),
    pytest.param(transformers.MarianMTModel, bart_config(transformers.MarianConfig), id="marian"),
    pytest.param(transformers.BlenderbotForConditionalGeneration, bart_config(transformers.BlenderbotConfig),
                 id="blenderbot"),
    pytest.param(transformers.M2M100ForConditionalGeneration, bart_config(transformers.M2M100Config), id="m2m100"),
    pytest.param(transformers.T5ForConditionalGeneration, t5_config(transformers.T5Config), id="t5"),
    pytest.param(transformers.MT5ForConditionalGeneration, t5_config(transformers.MT5Config), id="mt5"),
    pytest.param(transformers.BartModel, bart_config(transformers.BartConfig), id="bart-base-model"),
]


class TestEncoderDecoderModelsAreRefused:
    @pytest.mark.parametrize(("cls", "config"), ENCODER_DECODERS)
    def test_refused_naming_the_model_before_running_it(self, cls, config):
        torch.manual_seed(0)
        model = cls(config).eval()
        before = snapshot(model)
        ran = []
        handle = model.register_forward_pre_hook(lambda *_: ran.append(1))
        with pytest.raises(TypeError, match=f"does not support encoder-decoder models yet, and {cls.__name__} is one"):
            profile_generation(model, PROMPT, max_new_tokens=2)
        handle.remove()
        assert not ran
        assert_unchanged(model, before)

    def test_a_model_of_its_own_that_takes_decoder_input_ids(self):
        class Seq2Seq(TupleCacheLM):
            def forward(self, input_ids, decoder_input_ids=None, past_key_values=None, use_cache=True):
                return super().forward(input_ids, past_key_values, use_cache)

        with pytest.raises(TypeError, match="Seq2Seq is one"):
            profile_generation(Seq2Seq(), PROMPT, max_new_tokens=2)


def mamba() -> nn.Module:
    torch.manual_seed(0)
    return transformers.MambaForCausalLM(transformers.MambaConfig(num_hidden_layers=2, hidden_size=32, vocab_size=100,
                                                                  state_size=8)).eval()


def mamba2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(num_hidden_layers=2, hidden_size=32, vocab_size=100, state_size=8, num_heads=4,
                                    head_dim=16, n_groups=1, expand=2, chunk_size=8)
    return transformers.Mamba2ForCausalLM(cfg).eval()


def mistral_sliding() -> nn.Module:
    """Every layer a sliding window of 4 tokens: the cache keeps the last 3."""
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=100, sliding_window=4,
                                     max_position_embeddings=64)
    return transformers.MistralForCausalLM(cfg).eval()


def gemma2_hybrid() -> nn.Module:
    """Sliding-window and full-attention layers alternating."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, vocab_size=100, sliding_window=4,
                                    max_position_embeddings=64)
    return transformers.Gemma2ForCausalLM(cfg).eval()


def held_bytes(cache) -> int:
    """The oracle: nbytes of the state tensors generate's own cache holds, read from where each
    layer type keeps them (keys and values; convolution and recurrent states)."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None),
                       *getattr(layer, "conv_states", {}).values(), *getattr(layer, "recurrent_states", {}).values()):
            if tensor is not None:
                total += tensor.nbytes
    return total


class TestEveryCacheLayoutsBytes:
    """The bytes a cache holds after the last step are those of generate's cache after the same
    tokens; tokens as generate's, with or without a mask (generate drops it after a state-space
    model's prefill)."""

    @pytest.mark.parametrize(("make", "mask"), [
        *(pytest.param(make, mask, id=f"{make.__name__}-{kind}") for make in (mamba, mamba2)
          for mask, kind in ((None, "no-mask"), (torch.ones_like(PADDED), "ones"), (PADDED_MASK, "padded"))),
        pytest.param(mistral_sliding, PADDED_MASK, id="sliding-window-padded"),
        pytest.param(gemma2_hybrid, PADDED_MASK, id="sliding-and-full-padded"),
        pytest.param(llama, PADDED_MASK, id="dynamic-padded"),
    ])
    def test_tokens_and_cache_bytes_as_generates(self, make, mask):
        model = make()
        prompt = PADDED if mask is PADDED_MASK else PADDED + (1 - PADDED_MASK)  # no pad, where nothing masks it
        result = generated(model, prompt, kwargs={"attention_mask": mask} if mask is not None else None)
        out = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=None,
                             pad_token_id=0, return_dict_in_generate=True)
        assert torch.equal(result.tokens, out.sequences[:, prompt.shape[1]:])
        assert result.kv_cache_bytes == held_bytes(out.cache) > 0

    def test_a_state_space_cache_does_not_grow_with_the_context(self):
        result = generated(mamba(), PADDED)
        cfg = mamba().config
        batch, inner = PADDED.shape[0], cfg.intermediate_size
        conv, ssm = batch * inner * cfg.conv_kernel * 4, batch * inner * cfg.state_size * 4
        assert {p.kv_cache_bytes for p in result.phases} == {cfg.num_hidden_layers * (conv + ssm)}

    def test_a_tuple_cache_and_a_tensor_held_twice(self):
        """Each memory once: the tuple cache's keys and values, and a cache listing a tensor twice."""
        from profiler.generation import cache_bytes
        model = TupleCacheLM().eval()
        result = generated(model, torch.tensor([[1, 2, 3, 4]]), new=3)
        keys = torch.zeros(1, 6, 16)
        assert result.kv_cache_bytes == 2 * keys.nbytes
        assert cache_bytes((keys, keys, [keys[:, :2]])) == keys.nbytes


class NoCacheLM(TupleCacheLM):
    """Takes past_key_values and ignores it: returns logits alone."""

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        return super().forward(input_ids, None, use_cache)[0]


class NoneCacheLM(TupleCacheLM):
    def forward(self, input_ids, past_key_values=None, use_cache=True):
        return super().forward(input_ids, None, use_cache)[0], None


def test_a_transformers_older_than_5_is_refused(monkeypatch):
    model = llama()
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.46.3")  # transformers swaps its module object
    with pytest.raises(RuntimeError, match=r"transformers 4\.46\.3 is installed: upgrade it \(pip install 'transformers>=5'\)"):
        profile_generation(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2)


@pytest.mark.parametrize("cls", [NoCacheLM, NoneCacheLM])
def test_a_model_that_returns_no_cache_is_refused(cls):
    with pytest.raises(TypeError, match=f"{cls.__name__}.forward takes past_key_values but the prefill left no cache"):
        profile_generation(cls().eval(), torch.tensor([[1, 2, 3]]), max_new_tokens=3)


class FreshCacheLM(TupleCacheLM):
    """Takes past_key_values and never reads it: returns a new cache of the tokens it was fed."""

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        return super().forward(input_ids, None, use_cache)


class WritesOnceLM(nn.Module):
    """Takes a Hugging Face cache and fills it in the prefill only: a decode step leaves it as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 50)

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        h = self.embed(input_ids)
        if past_key_values.get_seq_length() == 0:
            past_key_values.update(h[:, None], h[:, None], 0)
        return self.head(h), past_key_values


@pytest.mark.parametrize(("model", "what"), [
    pytest.param(FreshCacheLM(), f"holds {2 * 1 * 16 * 4:,} bytes where the cache it was given held {2 * 3 * 16 * 4:,}",
                 id="a fresh cache each step"),
    pytest.param(WritesOnceLM(), "counts 3 tokens, as many as before it", id="a cache it stops writing"),
])
def test_a_model_that_does_not_continue_from_its_cache_is_refused(model, what):
    prompt = torch.tensor([[1, 2, 3]])
    if isinstance(model, WritesOnceLM):
        model.config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=1, vocab_size=50)
    with pytest.raises(TypeError) as info:
        profile_generation(model.eval(), prompt, max_new_tokens=3)
    assert f"{type(model).__name__}.forward takes past_key_values but does not continue from it: after decode step 1 " \
        f"the cache {what}" in str(info.value)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_failing_calls_leave_nothing_alive():
    """Thirty failing calls, a forward that raises in the first decode step or bad input: no
    tensor outlives them (the cache, the captures, the logits)."""
    model = llama()
    forwards = []

    def raise_in_the_second_forward(module, args):
        forwards.append(1)
        if len(forwards) == 2:
            raise RuntimeError("boom")

    generated(model, new=1)  # warm: whatever a first call keeps for good is made before counting
    handle = model.model.layers[1].register_forward_pre_hook(raise_in_the_second_forward)
    before = _live_tensors()
    for n in range(30):
        forwards.clear()
        with pytest.raises((RuntimeError, ValueError)):
            if n % 3 == 2:
                profile_generation(model, PROMPT, max_new_tokens=2, kwargs={"attention_mask": PROMPT[:, :2]})
            else:
                profile_generation(model, PROMPT, max_new_tokens=NEW)
    handle.remove()
    assert _live_tensors() == before


def test_a_forward_the_capture_runs_again_starts_from_the_cache_before_it(monkeypatch):
    """The capture runs a forward again when its first run loaded Dynamo and raised; what that
    run wrote to the cache (layer 0's new keys and values) is cropped before the second."""
    import sys
    dynamo = sys.modules["torch._dynamo"]
    model = llama()
    forwards = []

    def load_dynamo_and_raise_once(module, args):
        forwards.append(1)
        if len(forwards) == 3:  # the prefill, the first decode step's first run: layer 0 has written
            assert "torch._dynamo" not in sys.modules, "the forward imported Dynamo itself: the test cannot fake it"
            sys.modules["torch._dynamo"] = dynamo
            raise RuntimeError("as a forward that loads Dynamo under the hooks")

    handle = model.model.layers[1].register_forward_pre_hook(load_dynamo_and_raise_once)
    monkeypatch.delitem(sys.modules, "torch._dynamo")
    try:
        result = generated(model, PROMPT)
    finally:
        handle.remove()
    assert sys.modules["torch._dynamo"] is dynamo and len(forwards) == NEW + 1
    out = model.generate(PROMPT, do_sample=False, max_new_tokens=NEW, eos_token_id=None, pad_token_id=0,
                         return_dict_in_generate=True)
    assert torch.equal(result.tokens, out.sequences[:, PROMPT.shape[1]:])
    assert result.kv_cache_bytes == held_bytes(out.cache)


class TupleCacheNoUseCacheLM(TupleCacheLM):
    """A forward that takes no use_cache (it always returns its cache)."""

    def forward(self, input_ids, past_key_values=None):
        return super().forward(input_ids, past_key_values)


class KwargsOnlyLM(TupleCacheLM):
    def forward(self, **kwargs):
        return super().forward(kwargs["input_ids"], kwargs.get("past_key_values"))


class TestWhatTheForwardTakes:
    """Each forward gets only what it takes; what it cannot take is refused before it runs."""

    def test_a_forward_without_use_cache_is_not_given_one(self):
        """Nor a mask or token types of None, which generate takes as none given."""
        model = TupleCacheNoUseCacheLM().eval()
        same = TupleCacheLM().eval()
        same.load_state_dict(model.state_dict())
        prompt = torch.tensor([[1, 2, 3, 4]])
        result = generated(model, prompt, new=3, kwargs={"attention_mask": None, "token_type_ids": None})
        expected = generated(same, prompt, new=3)
        assert torch.equal(result.tokens, expected.tokens)
        assert [(p.matmul_flops, p.kv_cache_bytes) for p in result.phases] == [
            (p.matmul_flops, p.kv_cache_bytes) for p in expected.phases]

    @pytest.mark.parametrize(("model", "kwargs", "message"), [
        pytest.param(TupleCacheLM, {"attention_mask": torch.ones(1, 3, dtype=torch.long)},
                     r"kwargs 'attention_mask' would go to every forward, and TupleCacheLM.forward takes no such "
                     r"argument: it takes \(input_ids, past_key_values, use_cache\)", id="mask"),
        pytest.param(TupleCacheLM, {"scale": 2.0, "attention_mask": None}, "kwargs 'scale' would go to every forward,",
                     id="other"),
        pytest.param(KwargsOnlyLM, {}, r"KwargsOnlyLM.forward takes \(\*\*kwargs\): a state under another name, or "
                                       r"behind \*\*kwargs, is not one it can drive", id="kwargs-only"),
    ])
    def test_refused_before_any_forward_runs(self, model, kwargs, message):
        model = model().eval()
        ran = []
        handle = model.register_forward_pre_hook(lambda *_: ran.append(1))
        with pytest.raises(TypeError, match=message):
            profile_generation(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2, kwargs=kwargs)
        handle.remove()
        assert not ran

    @pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
    def test_a_compiled_model_counts_as_the_model_it_wraps(self):
        model = llama()
        compiled = torch.compile(model, backend="eager")
        mask = PADDED_MASK[:2, :5]
        plain = generated(model, PADDED[:2, :5], kwargs={"attention_mask": mask})
        result = generated(compiled, PADDED[:2, :5], kwargs={"attention_mask": mask})
        assert torch.equal(result.tokens, plain.tokens)
        assert [(p.matmul_flops, p.kv_cache_bytes) for p in result.phases] == [
            (p.matmul_flops, p.kv_cache_bytes) for p in plain.phases]
        assert result.prefill_logits == "last"
        with pytest.raises(ValueError, match="LlamaForCausalLM's config has 64"):
            profile_generation(compiled, PROMPT, max_new_tokens=64)

    def test_token_type_ids_grow_as_generate_grows_them(self):
        """GPT-2 embeds token types with its token embedding: types that change the tokens."""
        model = gpt2()
        types = torch.randint(0, 100, PROMPT.shape, generator=torch.Generator().manual_seed(2))
        result = generated(model, kwargs={"token_type_ids": types})
        tokens, flops = generate_per_forward(model, PROMPT, NEW, token_type_ids=types)
        assert torch.equal(result.tokens, tokens)
        assert not torch.equal(result.tokens, generated(model).tokens)
        assert [p.matmul_flops for p in result.phases] == flops
        with pytest.raises(ValueError, match=r"token_type_ids must be a tensor of the prompt's shape \[2, 7\]"):
            profile_generation(model, PROMPT, max_new_tokens=2, kwargs={"token_type_ids": types[:, :3]})

    def test_a_prompt_of_one_row_and_its_mask_may_be_1d(self):
        model = gpt2()
        mask = PADDED_MASK[1]
        flat = generated(model, PADDED[1], kwargs={"attention_mask": mask, "token_type_ids": PADDED[1]})
        rows = generated(model, PADDED[1:2], kwargs={"attention_mask": mask[None], "token_type_ids": PADDED[1:2]})
        assert torch.equal(flat.tokens, rows.tokens)
        assert [p.matmul_flops for p in flat.phases] == [p.matmul_flops for p in rows.phases]

    def test_a_meta_mask_has_no_values_and_counts_as_ones(self):
        """A mask on the meta device cannot say which tokens are padding: taken as generate takes a
        mask of ones (dropped), where a model's own mask code would need its values."""
        with torch.device("meta"):
            model = llama().to("meta")
        prompt = torch.zeros(PROMPT.shape, dtype=torch.long, device="meta")
        masked = profile_generation(model, prompt, max_new_tokens=3, kwargs={"attention_mask": torch.ones_like(prompt)})
        plain = profile_generation(model, prompt, max_new_tokens=3)
        assert [(p.flops, p.bytes, p.kv_cache_bytes) for p in masked.phases] == [
            (p.flops, p.bytes, p.kv_cache_bytes) for p in plain.phases]

    def test_a_base_model_without_a_head_is_named(self):
        model = llama().model
        with pytest.raises(TypeError, match=r"LlamaModel.forward returned BaseModelOutputWithPast with no logits "
                                            r"\(it has last_hidden_state, .*\): give it the model with its language"):
            profile_generation(model, PROMPT, max_new_tokens=2)


class TestTheGenerationConfigsLogitsProcessors:
    """generate changes the logits before its argmax as the model's generation config says: so does
    profile_generation, and the tokens stay generate's."""

    @pytest.mark.parametrize("settings", [
        pytest.param({"no_repeat_ngram_size": 1, "repetition_penalty": 5.0}, id="no-repeats"),
        pytest.param({"forced_bos_token_id": 3, "forced_eos_token_id": 4}, id="forced-first-and-last"),
        pytest.param({"suppress_tokens": list(range(50))}, id="suppressed"),
    ])
    def test_tokens_as_generates(self, settings):
        model = llama()
        plain = generated(model, PADDED, kwargs={"attention_mask": PADDED_MASK})
        model.generation_config.update(**settings)
        result = generated(model, PADDED, kwargs={"attention_mask": PADDED_MASK})
        tokens, flops = generate_per_forward(model, PADDED, NEW, attention_mask=PADDED_MASK)
        assert torch.equal(result.tokens, tokens) and not torch.equal(result.tokens, plain.tokens)
        assert [p.matmul_flops for p in result.phases] == flops == [p.matmul_flops for p in plain.phases]
