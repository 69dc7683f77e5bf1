"""``profile_generation``: what serving a causal language model costs, the prompt's prefill and
then one decode step per generated token, each step counted on its own and by layer.

Greedy generation as Hugging Face's ``generate(do_sample=False, max_new_tokens=N)`` runs it: one
forward of the whole prompt (the prefill) gives the first new token, then ``N - 1`` forwards of
one token each (the decode steps), each reading the cache the earlier ones filled. Each forward
is given what ``generate`` gives it: a Hugging Face model builds its inputs with its own
``prepare_inputs_for_generation`` (so each family's handling of the mask, such as Mamba's
dropping it after the prefill, is its own), positions count the attention mask's ones, an
all-ones mask is dropped, and ``logits_to_keep=1`` where the forward takes it, so the prefill
computes the logits of the last position only. The next token is the argmax after the logits
processors the model's generation config asks ``generate`` for (forced tokens, repetition
penalties, suppressed tokens). A ``torch.compile`` wrapper is read through the model it wraps.
Encoder-decoder models are refused.

The KV cache is taken as preallocated, as a serving engine keeps it: a step writes its new keys
and values and its attention reads the whole cache. ``DynamicCache`` concatenates instead,
copying the whole cache at every step; that copy is not counted, the write of the new entries is.
"""

from __future__ import annotations

import copy
import html
import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from tabulate import tabulate
from torch import nn

from hooks import REGISTRY, Resolver, capture_forward
from hooks.capture import Capture, record_traffic
from hooks.traffic import tensor_bytes, traffic
from profiler.api import _check_devices, check_counted, compute_dtype, warn_uncounted
from profiler.result import ProfileResult, RooflineResult
from profiler.roofline import Device
from profiler.tree import uncounted_summary
from profiler.units import format_bytes, format_count, format_seconds

__all__ = ["GenerationResult", "GenerationRoofline", "GenerationStep", "cache_bytes", "cache_tensors",
           "profile_generation"]

_PER_STEP = frozenset({"input_ids", "cache", "past_key_values", "use_cache", "position_ids", "cache_position",
                       "inputs_embeds", "logits_to_keep"})
"""Forward arguments that change with every step: refused in ``kwargs``."""

_PER_TOKEN = ("attention_mask", "token_type_ids")
"""``kwargs`` of the prompt's shape that grow a column a step under ``generate``: the mask with a
one, the token types with the last column again."""

MAX_PHASE_ROWS = 12
"""Decode steps beyond this many are shown in groups of equal size (every step is in ``steps``)."""

_CACHE_DEPTH = 8
"""How deep :func:`cache_tensors` looks through a cache's attributes and containers."""


class GenerationStep(NamedTuple):
    """One forward of a generation: the prefill (``step`` 0) or a decode step (1, 2, ...)."""

    step: int
    tokens: int
    """Tokens each sequence fed in: the prompt's length (padding included) for the prefill, then 1."""
    context: int
    """Tokens seen after this forward (the prompt and the tokens fed so far); a sliding-window
    layer's cache keeps fewer, a state-space model's a state of fixed size."""
    macs: int
    flops: int
    matmul_flops: int
    bytes_read: int
    bytes_written: int
    kv_cache_bytes: int
    """Bytes the cache holds after this forward: every tensor in it (keys and values, a
    state-space model's convolution and SSM states), each once."""

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _itself(model: nn.Module) -> nn.Module:
    """The model a ``torch.compile`` wrapper stands for (its forward's signature, config and
    ``generate`` machinery); any other model as it is."""
    dynamo = sys.modules.get("torch._dynamo")  # not loaded: nothing can have been compiled
    if dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule):
        return _itself(model._orig_mod)
    return model


def _parameters(model: nn.Module) -> Mapping[str, inspect.Parameter]:
    """The parameters ``model.forward`` takes (none where it has no signature)."""
    try:
        return inspect.signature(_itself(model).forward).parameters
    except (TypeError, ValueError):
        return {}


def _takes(parameters: Mapping[str, inspect.Parameter], name: str) -> bool:
    """Whether a forward with these parameters takes ``name`` by keyword (by name, or ``**kwargs``)."""
    parameter = parameters.get(name)
    if parameter is not None:
        return parameter.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _signature_text(parameters: Mapping[str, inspect.Parameter]) -> str:
    """``(input_ids, *args, **kwargs)``: the names a forward takes, as written."""
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return "(" + ", ".join(stars.get(p.kind, "") + p.name for p in parameters.values()) + ")"


def _refuse_encoder_decoder(model: nn.Module) -> None:
    """Raise for an encoder-decoder model (its config says so, or its forward takes decoder ids)."""
    config = getattr(_itself(model), "config", None)
    if getattr(config, "is_encoder_decoder", False) is True or "decoder_input_ids" in _parameters(model):
        raise TypeError(
            f"profile_generation does not support encoder-decoder models yet, and {type(_itself(model)).__name__} is "
            "one: "
            "generate runs its encoder once and then decodes with cross-attention, which profile_generation does "
            "not drive. Profile a decoder-only (causal) language model, or the encoder and one decoder forward "
            "with profile()")


def _cache_argument(model: nn.Module) -> str:
    """The name ``forward`` takes the KV cache by: ``cache`` (transformers 5), ``past_key_values``."""
    parameters = _parameters(model)
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    name = type(_itself(model)).__name__
    raise TypeError(
        f"profile_generation needs a causal language model whose forward takes its cache by the name "
        f"past_key_values (Hugging Face's generate contract), and {name}.forward takes "
        f"{_signature_text(parameters)}: a state under another name, or behind **kwargs, is not one it can "
        f"drive. Give it the language model itself (a wrapper's inner model), or profile one forward with profile()")


def _generation_mixin(model: nn.Module) -> bool:
    """Whether ``model`` generates with Hugging Face's ``generate`` (and so has its
    ``prepare_inputs_for_generation``)."""
    transformers = sys.modules.get("transformers")  # never imported: not one of its models
    return transformers is not None and isinstance(_itself(model), transformers.GenerationMixin)


def _check_transformers() -> None:
    """Refuse a transformers older than 5: its ``prepare_inputs_for_generation`` takes other
    arguments, and its ``generate`` derives positions and caches otherwise."""
    installed = sys.modules["transformers"].__version__
    major = installed.split(".")[0]
    if major.isdigit() and int(major) < 5:
        raise RuntimeError(f"profile_generation drives a Hugging Face model as transformers 5's generate does; "
                           f"transformers {installed} is installed: upgrade it (pip install 'transformers>=5')")


def _new_cache(model: nn.Module) -> Any:
    """The cache ``generate`` starts from: an empty ``DynamicCache`` for a Hugging Face model that
    takes one, else None (the model makes its own and hands it back)."""
    model = _itself(model)
    config = getattr(model, "config", None)
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(config, transformers.PretrainedConfig):
        return None
    supports = getattr(model, "_supports_default_dynamic_cache", None)  # generate's own test (RWKV, XLNet: no)
    if callable(supports) and not supports():
        return None
    try:
        return transformers.DynamicCache(config=config.get_text_config(decoder=True))
    except TypeError:  # a cache class that makes its layers as they fill
        return transformers.DynamicCache()


def _logits_processors(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> Any:
    """What greedy ``generate`` does to the logits before its argmax, from the model's generation config
    (forced first and last tokens, repetition penalties, suppressed tokens), or None where there is
    nothing to do. As under ``eos_token_id=None``: nothing stops generation, so nothing holds an end
    token back. None on the meta device, whose logits have no values to change."""
    model = _itself(model)
    config = getattr(model, "generation_config", None)
    get = getattr(model, "_get_logits_processor", None)  # generate's own (private) builder
    if config is None or get is None or input_ids.device.type == "meta":
        return None
    config = copy.deepcopy(config)
    config.do_sample, config.num_beams, config.eos_token_id = False, 1, None
    config.max_length = input_ids.shape[1] + max_new_tokens
    config.max_new_tokens = max_new_tokens
    processors = get(generation_config=config, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
                     device=input_ids.device, model_kwargs={})
    return processors or None


def _counted_update(cache: Any) -> None:
    """Make ``cache.update`` count as a preallocated cache's write of the new keys and values:
    its own concatenation runs unseen, and the new entries' bytes are read and written once."""
    original = cache.update

    def update(key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch._C.DisableTorchFunction():
            out = original(key_states, value_states, *args, **kwargs)
        new = tensor_bytes(key_states) + tensor_bytes(value_states)
        record_traffic("kv_cache.update", new, new)
        return out

    cache.update = update


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Every tensor a cache holds, found through its attributes, dicts, lists and tuples: a
    ``DynamicCache``'s keys and values (full, sliding-window or hybrid layers), a state-space
    layer's convolution and SSM states, a model's own tuples. A 0-dim tensor (a layer's token
    counter) is bookkeeping, not state that grows with the batch or the context: left out."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            if value.dim():
                found.append(value)
            return
        if depth > _CACHE_DEPTH or id(value) in seen or value is None \
                or isinstance(value, (str, bytes, int, float, bool, type, nn.Module, torch.device, torch.dtype)) \
                or inspect.isroutine(value) or inspect.ismodule(value):
            return
        seen.add(id(value))
        if isinstance(value, Mapping):
            items = list(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
        else:
            items = list(getattr(value, "__dict__", {}).values())
        for item in items:
            walk(item, depth + 1)

    walk(cache, 0)
    return found


def cache_bytes(cache: Any) -> int:
    """Bytes of the tensors a cache holds (:func:`cache_tensors`), each memory once (a tensor
    held twice, or two views from one address, count once, at the larger)."""
    return traffic(cache_tensors(cache), {})


def _output_parts(out: Any, cache_argument: str, name: str) -> tuple[torch.Tensor, Any]:
    """``(logits, cache)`` of a forward's output: a ``ModelOutput``, a dict or a tuple."""
    if isinstance(out, Mapping):
        logits = out.get("logits")
        cache = out.get(cache_argument)
        if cache is None:  # transformers 5 returns .cache to a forward that takes past_key_values
            cache = out.get("cache", out.get("past_key_values"))
    elif isinstance(out, (tuple, list)) and len(out) >= 2:
        logits, cache = out[0], out[1]
    else:
        logits, cache = out, None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = type(out).__name__ + (f" with no logits (it has {', '.join(out)})" if isinstance(out, Mapping) else "")
        raise TypeError(f"profile_generation needs a forward that returns logits of shape [batch, tokens, vocab] (as "
                        f".logits or first), and {name}.forward returned {got}: give it the model with its language "
                        "modelling head (a ...ForCausalLM), not the base model")
    return logits, cache


def _positions(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``generate``'s position ids for the prompt: the count of the mask's ones before each token
    (0 on padding), else 0, 1, 2, ..."""
    if mask is None:
        return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _first_state(model: nn.Module, generation: bool, input_ids: torch.Tensor, mask: torch.Tensor | None,
                 state: dict[str, Any], full_logits: bool) -> dict[str, Any]:
    """What ``generate`` keeps between steps, at the start: ``state`` (the cache, ``use_cache``, the
    user's kwargs) with the positions, the mask and ``logits_to_keep``, each where the forward takes it."""
    parameters = _parameters(model)
    if "position_ids" in parameters:  # generate counts them from a mask, of ones where none is given
        counted = mask if mask is not None or "attention_mask" not in parameters else torch.ones_like(input_ids)
        state["position_ids"] = _positions(input_ids, counted)
    if generation and "attention_mask" in parameters and (
            mask is None or mask.device.type == "meta" or bool((mask == 1).all())):
        mask = None  # generate drops a mask of ones (a meta mask has no values: taken as ones): nothing is padded
    if mask is not None:
        state["attention_mask"] = mask
    if "logits_to_keep" in parameters and not full_logits:
        state["logits_to_keep"] = 1
    return state


def _step_inputs(model: nn.Module, generation: bool, ids: torch.Tensor, state: dict[str, Any],
                 first: bool) -> dict[str, Any]:
    """One forward's keyword arguments: a Hugging Face model's own ``prepare_inputs_for_generation``
    (as ``generate`` calls it), else the new tokens, their positions and ``state`` as it is."""
    if generation:
        return _itself(model).prepare_inputs_for_generation(ids, next_sequence_length=None if first else 1,
                                                   is_first_iteration=first, **state)
    tokens = ids if first else ids[:, -1:]
    inputs = {**state, "input_ids": tokens}
    for key in ("position_ids", "token_type_ids"):  # one per token: the new tokens' (the mask covers the context)
        if key in state:
            inputs[key] = state[key][..., -tokens.shape[1]:]
    return inputs


def _roll_back(cache: Any, length: int) -> None:
    """Crop each cache layer back to ``length`` tokens: what the failed first run of a retried
    forward wrote (the capture runs a forward again when the first run loaded Dynamo)."""
    with torch._C.DisableTorchFunction():
        for layer in getattr(cache, "layers", ()):
            extra = int(layer.get_seq_length()) - length
            if extra > 0:
                try:
                    layer.crop(-extra)
                except (RuntimeError, ValueError) as exc:
                    raise RuntimeError(
                        f"a forward ran twice (its first run loaded Dynamo) and the cache's {type(layer).__name__} "
                        "cannot drop what the first run wrote; run profile_generation again (Dynamo is loaded now)"
                    ) from exc


def _run(model: nn.Module, inputs: dict[str, Any], resolver: Resolver, cache: Any, length: int) -> tuple[Capture, Any]:
    """One captured forward and its output; a run the capture repeats starts from ``cache`` cropped
    back to ``length`` tokens."""
    outputs: list[Any] = []
    runs = 0

    def forward() -> None:
        nonlocal runs
        if runs:
            _roll_back(cache, length)
        runs += 1
        outputs.append(model(**inputs))

    capture = capture_forward(model, forward, resolver)
    return capture, outputs[-1]


def _step(number: int, tokens: int, context: int, capture: Capture, cache: Any) -> GenerationStep:
    macs = flops = matmul = read = written = 0
    for r in capture.records:
        macs += r.macs
        flops += r.flops
        matmul += r.matmul_flops
        read += r.bytes_read
        written += r.bytes_written
    return GenerationStep(number, tokens, context, macs, flops, matmul, read, written, cache_bytes(cache))


def profile_generation(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    kwargs: Mapping[str, Any] | None = None,
    strict: bool = False,
    full_logits: bool = False,
) -> GenerationResult:
    """Profile greedy generation of ``max_new_tokens`` tokens after the prompt ``input_ids``
    (``[batch, tokens]``, or ``[tokens]``): the prefill, then ``max_new_tokens - 1`` decode steps
    with a KV cache, each counted on its own.

    ``model`` is a causal language model that takes its cache by keyword (``past_key_values``, or
    ``cache`` in transformers 5) and returns logits and the cache; encoder-decoder models are
    refused, and so are ``kwargs`` the forward takes no argument for. ``kwargs`` go to every
    forward; an ``attention_mask`` (left padding) sets the positions and grows by one column a
    step, and ``token_type_ids`` grow by their last column, as under ``generate`` (a mask on the
    meta device has no values: a Hugging Face model gets none, as for a mask of ones). Each
    forward gets what ``generate(do_sample=False, max_new_tokens=N)`` gives it (``use_cache=True``
    where it takes it, even where the model's config turns the cache off) and the tokens are the
    ones it picks, with no stopping at an end token. The prefill computes the logits of the last position only
    where the forward takes ``logits_to_keep``, as ``generate`` does; ``full_logits=True`` computes
    them at every prompt position, as a plain call of the model does. The model runs in eval mode
    without grad and comes back as it was. ``strict=True`` raises :class:`UncountedError` if
    anything ran without a rule.
    """
    if isinstance(model, type) or not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module instance, not {model!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex() \
            or input_ids.dim() not in (1, 2) or input_ids.numel() == 0:
        raise ValueError("input_ids must be a non-empty integer tensor of token ids, [batch, tokens] or [tokens]; "
                         f"got {input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}"
                         + (f" of shape {list(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else ""))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if not isinstance(full_logits, bool):
        raise TypeError(f"full_logits must be True or False, not {full_logits!r}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    name = type(_itself(model)).__name__
    _refuse_encoder_decoder(model)
    cache_argument = _cache_argument(model)
    parameters = _parameters(model)
    extra = {key: value for key, value in (kwargs or {}).items() if not (key in _PER_TOKEN and value is None)}
    taken = sorted(_PER_STEP & set(extra))
    if taken:
        raise ValueError(f"kwargs may not set {', '.join(taken)}: profile_generation sets the ids, the cache and "
                         "use_cache each step, the positions from the attention mask and logits_to_keep as generate "
                         "does (full_logits=True for the logits of every prompt position)")
    unknown = [key for key in extra if not _takes(parameters, key)]
    if unknown:
        raise TypeError(f"kwargs {', '.join(map(repr, unknown))} would go to every forward, and {name}.forward takes "
                        f"no such argument: it takes {_signature_text(parameters)}")
    config = getattr(_itself(model), "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    needed = input_ids.shape[-1] + max_new_tokens - 1
    if isinstance(limit, int) and needed > limit:
        raise ValueError(f"a prompt of {input_ids.shape[-1]} tokens and {max_new_tokens} new ones need {needed} "
                         f"positions; {name}'s config has {limit}")
    _check_devices(model, (input_ids,), extra)
    for key in _PER_TOKEN:
        value = extra.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 1:  # [tokens], as the prompt may be
            value = extra[key] = value.unsqueeze(0)
        if value is not None and (not isinstance(value, torch.Tensor) or value.shape != input_ids.shape):
            raise ValueError(f"{key} must be a tensor of the prompt's shape {list(input_ids.shape)}, not "
                             + (f"{list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__))
    mask = extra.pop("attention_mask", None)

    generation = _generation_mixin(model)
    if generation:
        _check_transformers()
    processors = _logits_processors(model, input_ids, max_new_tokens) if generation else None
    cache = _new_cache(model)
    own_cache = cache is not None  # else the model makes one and hands it back each step
    if own_cache:
        _counted_update(cache)
    state: dict[str, Any] = {cache_argument: cache, **extra}
    if _takes(parameters, "use_cache"):
        state["use_cache"] = True
    state = _first_state(model, generation, input_ids, mask, state, full_logits)
    if "logits_to_keep" in state:
        note = "The prefill computes the logits of the last prompt position only, as generate does (logits_to_keep=1)."
    elif full_logits:
        note = ("The prefill computes the logits of every prompt position (full_logits=True); generate computes "
                "the last one's only.")
    else:
        note = f"The prefill computes the logits of every prompt position: {name}.forward takes no logits_to_keep."

    resolver = REGISTRY.resolver()
    captures: list[Capture] = []
    steps: list[GenerationStep] = []
    ids = input_ids
    batch, context = input_ids.shape
    lengths: list[int | None] = []  # the cache's own count of its tokens after each step, where it keeps one
    for number in range(max_new_tokens):
        inputs = _step_inputs(model, generation, ids, state, number == 0)
        fed = inputs["input_ids"].shape[1]
        before = context - fed
        capture, output = _run(model, inputs, resolver, state[cache_argument], before)
        logits, returned = _output_parts(output, cache_argument, name)
        if returned is not None:
            state[cache_argument] = returned
        if number == 0 and not cache_tensors(state[cache_argument]):
            raise TypeError(
                f"{name}.forward takes {cache_argument} but the prefill left no cache to continue from (it returned "
                f"none{', and the cache it was given stayed empty' if own_cache else ''}): each decode step would see "
                f"only its new token. profile_generation needs a forward that returns its cache (as .{cache_argument} "
                "or the second output) when use_cache=True")
        captures.append(capture)
        steps.append(_step(number, fed, context, capture, state[cache_argument]))
        if number:
            _check_continued(name, cache_argument, steps[-2:], state[cache_argument], lengths)
        lengths.append(_seq_length(state[cache_argument]))
        scores = logits[:, -1, :]
        if processors is not None:  # as generate, on float32 scores; outside the capture: not the model's work
            scores = processors(ids, scores.float())
        new = scores.argmax(-1, keepdim=True).to(input_ids.dtype)
        ids = torch.cat([ids, new], dim=1)
        context += 1
        if "attention_mask" in state:
            grown = state["attention_mask"]
            state["attention_mask"] = torch.cat([grown, grown.new_ones((batch, 1))], dim=-1)
        if state.get("token_type_ids") is not None:
            types = state["token_type_ids"]
            state["token_type_ids"] = torch.cat([types, types[:, -1:]], dim=-1)
        if "position_ids" in state:
            positions = state["position_ids"]
            state["position_ids"] = torch.cat([positions, positions[..., -1:] + 1], dim=-1)

    uncounted = uncounted_summary([r for c in captures for r in c.records])
    for capture in captures:
        check_counted(capture, uncounted, strict)
    warn_uncounted(uncounted)
    dtype = compute_dtype(model, (), extra)
    return GenerationResult(captures, steps, ids[:, input_ids.shape[1]:], dtype,
                            prefill_logits="last" if "logits_to_keep" in state else "all", note=note)


def _seq_length(cache: Any) -> int | None:
    """The tokens a cache says it holds (``get_seq_length()``), None where it keeps no count."""
    counted = getattr(cache, "get_seq_length", None)
    if not callable(counted):
        return None
    try:
        length = counted()
    except Exception:  # a cache of another library's, whose count needs arguments or a layer
        return None
    return length if isinstance(length, int) else None


def _check_continued(name: str, cache_argument: str, steps: Sequence[GenerationStep], cache: Any,
                     lengths: Sequence[int | None]) -> None:
    """Raise when a decode step did not continue from the cache it was given: the cache it left
    holds fewer bytes than before (a fresh one), or counts no more tokens than before (it was not
    written). A cache that stops growing (a sliding window, a state-space state) keeps its bytes."""
    before, after = steps
    length = _seq_length(cache)
    shrank = after.kv_cache_bytes < before.kv_cache_bytes
    stalled = lengths[-1] and length is not None and length <= lengths[-1]
    if shrank or stalled:
        what = (f"holds {after.kv_cache_bytes:,} bytes where the cache it was given held {before.kv_cache_bytes:,}"
                if shrank else f"counts {length} tokens, as many as before it")
        raise TypeError(
            f"{name}.forward takes {cache_argument} but does not continue from it: after decode step {after.step} "
            f"the cache {what}, so each decode step sees only its new token. profile_generation needs a forward "
            f"that reads {cache_argument} and returns it grown (as .{cache_argument} or the second output)")


class GenerationResult:
    """What ``profile_generation`` found: the prefill as a :class:`ProfileResult`, each decode
    step's totals, the decode steps' layers together (each layer's calls over all steps), and the
    tokens generated."""

    prefill: ProfileResult
    """The prompt's forward: the counts ``profile()`` gives for the forward ``generate`` runs
    (``logits_to_keep=1`` where the model takes it, unless ``full_logits=True``)."""
    steps: tuple[GenerationStep, ...]
    """One entry per decode step (the prefill is :attr:`phases`' first)."""
    tokens: torch.Tensor
    """The new tokens, ``[batch, max_new_tokens]``."""

    prefill_logits: str
    """Where the prefill computed logits: ``"last"`` (the last prompt position, as ``generate``) or
    ``"all"`` (every prompt position: ``full_logits=True``, or a forward without ``logits_to_keep``)."""
    note: str
    """The sentence under the phase table that says so."""

    def __init__(self, captures: Sequence[Capture], phases: Sequence[GenerationStep], tokens: torch.Tensor,
                 dtype: torch.dtype | None = None, *, prefill_logits: str = "all", note: str = "") -> None:
        modules = captures[0].modules
        self.prefill_logits = prefill_logits
        self.note = note
        self._modules = modules
        self._captures = tuple(captures)
        self.dtype = dtype
        self.phases = tuple(phases)
        self.steps = self.phases[1:]
        self.tokens = tokens
        self.batch_size = tokens.shape[0]
        self.prefill = self._result(captures[:1])
        self.decode = self._result(captures[1:]) if len(captures) > 1 else None
        """The decode steps' layers: each layer's calls over every step (``calls ×N``); None with no step."""

    def _result(self, captures: Sequence[Capture]) -> ProfileResult:
        records = [r for c in captures for r in c.records]
        return ProfileResult(self._modules, records, uncounted=uncounted_summary(records), dtype=self.dtype)

    def step(self, number: int) -> ProfileResult:
        """Decode step ``number`` (1, 2, ...; 0 is the prefill) as a :class:`ProfileResult` of its own."""
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < len(self.phases):
            raise IndexError(f"step {number!r} is not one of 0 (the prefill) to {len(self.phases) - 1}")
        return self._result(self._captures[number:number + 1])

    @property
    def total_macs(self) -> int:
        return sum(p.macs for p in self.phases)

    @property
    def total_flops(self) -> int:
        """FLOPs of the prefill and every decode step."""
        return sum(p.flops for p in self.phases)

    @property
    def matmul_flops(self) -> int:
        return sum(p.matmul_flops for p in self.phases)

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.phases)

    @property
    def total_params(self) -> int:
        return self.prefill.total_params

    @property
    def flops_per_token(self) -> float | None:
        """Decode FLOPs per generated token per sequence (the mean over the steps, whose context
        grows); None with no decode step."""
        if not self.steps:
            return None
        return sum(s.flops for s in self.steps) / (len(self.steps) * self.batch_size)

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes the cache holds at the end: for keys and values, ``2 · layers · batch · context · kv heads ·
        head dim · bytes``; a state-space model's states do not grow with the context."""
        return self.phases[-1].kv_cache_bytes

    def roofline(self, device: str | Device, dtype: str | torch.dtype | None = None) -> GenerationRoofline:
        """Estimated times on ``device`` (see :meth:`ProfileResult.roofline`): the prefill's, each
        decode step's, the time per token and the tokens per second they imply."""
        return GenerationRoofline(self, device, dtype)

    def table(self, *, units: str = "human", tablefmt: str = "simple") -> str:
        """One row per phase: the prefill, then the decode steps (in groups when there are many)."""
        return _phase_table(self, None, units, tablefmt)

    def layer_table(self, depth: int | None = None, **options: Any) -> str:
        """The decode steps' per-layer table (each layer's calls over every step); the prefill's
        when there was no decode step. Options as :meth:`ProfileResult.table`."""
        return (self.decode or self.prefill).table(depth, **options)

    def html(self) -> str:
        """The phase table and the decode steps' layer table as HTML."""
        return (tabulate(_phase_body(self, None, "human"), _phase_headers(None), tablefmt="html")
                + _note_html(self) + (self.decode or self.prefill).html())

    def _repr_html_(self) -> str:
        return self.html()

    def to_dict(self) -> dict[str, Any]:
        """Totals, every phase, and the prefill's and decode steps' reports as plain Python."""
        return {
            "totals": {
                "macs": self.total_macs, "flops": self.total_flops, "matmul_flops": self.matmul_flops,
                "bytes": self.total_bytes, "params": self.total_params, "flops_per_token": self.flops_per_token,
                "kv_cache_bytes": self.kv_cache_bytes, "batch_size": self.batch_size,
                "new_tokens": self.tokens.shape[1], "prefill_logits": self.prefill_logits,
            },
            "phases": [{**p._asdict(), "phase": "prefill" if p.step == 0 else "decode"} for p in self.phases],
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict() if self.decode is not None else None,
        }

    def __repr__(self) -> str:
        return (f"GenerationResult(prompt={self.phases[0].tokens}, new_tokens={self.tokens.shape[1]}, "
                f"batch={self.batch_size}, flops={format_count(self.total_flops, 'exact')}, "
                f"kv_cache={format_bytes(self.kv_cache_bytes)})")


class GenerationRoofline:
    """A generation's roofline estimates on one device: the prefill's and every step's time."""

    def __init__(self, result: GenerationResult, device: str | Device, dtype: str | torch.dtype | None) -> None:
        self.result = result
        self.prefill: RooflineResult = result.prefill.roofline(device, dtype)
        self.device, self.peak_dtype = self.prefill.device, self.prefill.peak_dtype
        self.decode: RooflineResult | None = result.decode.roofline(device, dtype) if result.decode else None
        self.phase_times = tuple(
            self.prefill.time if n == 0 else result.step(n).roofline(device, dtype).time for n in range(len(result.phases))
        )

    @property
    def prefill_time(self) -> float:
        return self.phase_times[0]

    @property
    def step_times(self) -> tuple[float, ...]:
        """Estimated seconds of each decode step."""
        return self.phase_times[1:]

    @property
    def time(self) -> float:
        """Estimated seconds of the whole generation."""
        return sum(self.phase_times)

    @property
    def time_per_token(self) -> float | None:
        """Mean estimated seconds of a decode step: each sequence gains one token a step."""
        return sum(self.step_times) / len(self.step_times) if self.step_times else None

    @property
    def tokens_per_second(self) -> float | None:
        """New tokens a second over the whole batch while decoding: ``batch / time_per_token``."""
        per_token = self.time_per_token
        return self.result.batch_size / per_token if per_token else None

    def table(self, *, units: str = "human", tablefmt: str = "simple") -> str:
        """The phase table with each phase's estimated time."""
        return _phase_table(self.result, self, units, tablefmt)

    def html(self) -> str:
        """The phase table and the decode steps' layer table, with estimated times, as HTML."""
        return (tabulate(_phase_body(self.result, self, "human"), _phase_headers(self), tablefmt="html")
                + _note_html(self.result) + (self.decode or self.prefill).html())

    def _repr_html_(self) -> str:
        return self.html()

    def to_dict(self) -> dict[str, Any]:
        """The generation's report (:meth:`GenerationResult.to_dict`) with each phase's estimated
        seconds, the time per token, the tokens per second and the device's figures."""
        data = self.result.to_dict()
        for phase, seconds in zip(data["phases"], self.phase_times):
            phase["roofline_time"] = seconds
        data["prefill"] = self.prefill.to_dict()
        data["decode"] = self.decode.to_dict() if self.decode is not None else None
        data["roofline"] = {**self.prefill.device_dict(), "time": self.time, "time_per_token": self.time_per_token,
                            "tokens_per_second": self.tokens_per_second}
        return data

    def __repr__(self) -> str:
        per_token = "" if self.time_per_token is None else (
            f", per_token={format_seconds(self.time_per_token)}, tokens_per_s={self.tokens_per_second:,.1f}")
        return (f"GenerationRoofline(device={self.device.name!r}, dtype={self.peak_dtype}, "
                f"prefill={format_seconds(self.prefill_time)}{per_token})")


def _groups(count: int) -> list[range]:
    """Decode step numbers 1..count, one per row up to MAX_PHASE_ROWS, else in equal groups."""
    if count <= MAX_PHASE_ROWS:
        return [range(n, n + 1) for n in range(1, count + 1)]
    size = -(-count // MAX_PHASE_ROWS)
    return [range(start, min(start + size, count + 1)) for start in range(1, count + 1, size)]


def _phase_headers(roofline: GenerationRoofline | None) -> list[str]:
    return ["Phase", "Tokens", "Context", "MACs", "FLOPs", "Bytes", "KV cache"] + (["Est. time"] if roofline else [])


def _phase_body(result: GenerationResult, roofline: GenerationRoofline | None, units: str) -> list[list[str]]:
    def row(label: str, numbers: range) -> list[str]:
        phases = [result.phases[n] for n in numbers]
        last = phases[-1]
        context = str(last.context) if len(phases) == 1 else f"{phases[0].context}–{last.context}"
        cells = [label, format_count(sum(p.tokens for p in phases), "exact"), context,
                 format_count(sum(p.macs for p in phases), units), format_count(sum(p.flops for p in phases), units),
                 format_bytes(sum(p.bytes for p in phases), units), format_bytes(last.kv_cache_bytes, units)]
        if roofline is not None:
            cells.append(format_seconds(sum(roofline.phase_times[n] for n in numbers)))
        return cells

    body = [row("prefill", range(0, 1))]
    for numbers in _groups(len(result.steps)):
        label = f"decode {numbers[0]}" if len(numbers) == 1 else f"decode {numbers[0]}–{numbers[-1]} ×{len(numbers)}"
        body.append(row(label, numbers))
    body.append(row("Total", range(0, len(result.phases))))
    body[-1][2] = ""
    return body


def _note_html(result: GenerationResult) -> str:
    return f"<p>{html.escape(result.note)}</p>" if result.note else ""


def _phase_table(result: GenerationResult, roofline: GenerationRoofline | None, units: str, tablefmt: str) -> str:
    headers = _phase_headers(roofline)
    text = tabulate(_phase_body(result, roofline, units), headers, tablefmt=tablefmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))
    lines = [text, ""]
    if result.note:
        lines.append(result.note)
    if result.flops_per_token is not None:
        lines.append(f"Decode: {format_count(round(result.flops_per_token), units)} FLOPs per token per sequence; "
                     f"KV cache {format_bytes(result.kv_cache_bytes)} at the end (batch {result.batch_size}).")
    if roofline is not None and roofline.time_per_token is not None:
        lines.append(f"On {roofline.device.name} ({roofline.peak_dtype}): {format_seconds(roofline.time_per_token)} "
                     f"per decode step, {roofline.tokens_per_second:,.1f} tokens/s over a batch of "
                     f"{result.batch_size}.")
    return "\n".join(lines).rstrip()
