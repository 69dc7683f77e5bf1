"""``profile_generation``: what serving a causal language model costs, the prompt's prefill and
then one decode step per generated token, each step counted on its own and by layer.

Greedy generation as Hugging Face's ``generate(do_sample=False, max_new_tokens=N)`` runs it: one
forward of the whole prompt (the prefill) gives the first new token, then ``N - 1`` forwards of
one token each (the decode steps), each reading the KV cache the earlier ones filled. The cache
is taken as preallocated, as a serving engine keeps it: a step writes its new keys and values
and its attention reads the whole cache. ``DynamicCache`` concatenates instead, copying the
whole cache at every step; that copy is not counted, the write of the new entries is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from tabulate import tabulate
from torch import nn
from torch.utils._pytree import tree_leaves

from hooks import REGISTRY, capture_forward
from hooks.capture import Capture, record_traffic
from hooks.traffic import tensor_bytes
from profiler.api import _check_devices, check_counted, compute_dtype, warn_uncounted
from profiler.result import ProfileResult, RooflineResult
from profiler.roofline import Device
from profiler.tree import uncounted_summary
from profiler.units import format_bytes, format_count, format_seconds

__all__ = ["GenerationResult", "GenerationRoofline", "GenerationStep", "profile_generation"]

_PER_STEP = frozenset({"input_ids", "cache", "past_key_values", "use_cache", "position_ids", "cache_position",
                       "inputs_embeds", "token_type_ids", "logits_to_keep"})
"""Forward arguments that change with every step: refused in ``kwargs``."""

MAX_PHASE_ROWS = 12
"""Decode steps beyond this many are shown in groups of equal size (every step is in ``steps``)."""


class GenerationStep(NamedTuple):
    """One forward of a generation: the prefill (``step`` 0) or a decode step (1, 2, ...)."""

    step: int
    tokens: int
    """Tokens each sequence fed in: the prompt's length (padding included) for the prefill, then 1."""
    context: int
    """Tokens in the KV cache after this forward (the prompt and the tokens fed so far)."""
    macs: int
    flops: int
    matmul_flops: int
    bytes_read: int
    bytes_written: int
    kv_cache_bytes: int
    """Bytes the KV cache holds after this forward."""

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _cache_argument(model: nn.Module) -> str:
    """The name ``forward`` takes the KV cache by: ``cache`` (transformers 5), ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        parameters = {}
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise TypeError(
        f"profile_generation needs a causal language model whose forward takes past_key_values (Hugging "
        f"Face's generate contract); {type(model).__name__}.forward takes ({', '.join(parameters)})")


def _new_cache(model: nn.Module) -> Any:
    """An empty ``DynamicCache`` for a Hugging Face model, else None (the model makes its own)."""
    config = getattr(model, "config", None)
    try:
        from transformers import DynamicCache, PretrainedConfig
    except ImportError:
        return None
    if not isinstance(config, PretrainedConfig):
        return None
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4: the layers are made as they fill
        return DynamicCache()


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
    """The key and value tensors a KV cache holds: a ``DynamicCache`` (transformers 4 or 5) or
    the legacy tuples of ``(key, value)`` per layer."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if isinstance(t, torch.Tensor)]
    if hasattr(cache, "key_cache"):
        return [t for t in (*cache.key_cache, *cache.value_cache) if isinstance(t, torch.Tensor)]
    return [t for t in tree_leaves(cache) if isinstance(t, torch.Tensor)]


def _output_parts(out: Any, cache_argument: str) -> tuple[torch.Tensor, Any]:
    """``(logits, cache)`` of a forward's output: a ``ModelOutput``, a dict or a tuple."""
    if isinstance(out, Mapping):
        logits = out.get("logits")
        cache = out.get(cache_argument)
    elif isinstance(out, (tuple, list)) and len(out) >= 2:
        logits, cache = out[0], out[1]
    else:
        logits, cache = out, None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError("profile_generation needs a forward that returns logits of shape [batch, tokens, vocab] "
                        f"(as .logits or first), not {type(out).__name__}")
    return logits, cache


def _step(number: int, tokens: int, context: int, capture: Capture, cache: Any) -> GenerationStep:
    macs = flops = matmul = read = written = 0
    for r in capture.records:
        macs += r.macs
        flops += r.flops
        matmul += r.matmul_flops
        read += r.bytes_read
        written += r.bytes_written
    kv = sum(tensor_bytes(t) for t in cache_tensors(cache))
    return GenerationStep(number, tokens, context, macs, flops, matmul, read, written, kv)


def profile_generation(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    kwargs: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> GenerationResult:
    """Profile greedy generation of ``max_new_tokens`` tokens after the prompt ``input_ids``
    (``[batch, tokens]``, or ``[tokens]``): the prefill, then ``max_new_tokens - 1`` decode steps
    with a KV cache, each counted on its own.

    ``model`` is a causal language model that takes its cache by keyword (``past_key_values``, or
    ``cache`` in transformers 5) and returns logits; ``kwargs`` go to every forward (an
    ``attention_mask`` grows by one column a step, as ``generate`` grows it). The tokens are the
    ones ``generate(do_sample=False, max_new_tokens=N)`` picks, with no stopping at an end token.
    The model runs in eval mode without grad and comes back as it was. ``strict=True`` raises
    :class:`UncountedError` if anything ran without a rule.
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
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    cache_argument = _cache_argument(model)
    extra = dict(kwargs or {})
    taken = sorted(_PER_STEP & set(extra))
    if taken:
        raise ValueError(f"kwargs may not set {', '.join(taken)}: profile_generation sets the ids, the cache and "
                         "use_cache each step, and the model derives positions from its cache")
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    needed = input_ids.shape[-1] + max_new_tokens - 1
    if isinstance(limit, int) and needed > limit:
        raise ValueError(f"a prompt of {input_ids.shape[-1]} tokens and {max_new_tokens} new ones need {needed} "
                         f"positions; {type(model).__name__}'s config has {limit}")
    _check_devices(model, (input_ids,), extra)
    mask = extra.pop("attention_mask", None)
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape):
        raise ValueError(f"attention_mask must be a tensor of the prompt's shape {list(input_ids.shape)}, not "
                         + (f"{list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__))
    resolver = REGISTRY.resolver()
    cache = _new_cache(model)
    own_cache = cache is not None  # else the model makes one and hands it back each step
    if own_cache:
        _counted_update(cache)

    captures: list[Capture] = []
    steps: list[GenerationStep] = []
    new_tokens: list[torch.Tensor] = []
    ids = input_ids
    batch, context = input_ids.shape
    for number in range(max_new_tokens):
        arguments = {"input_ids": ids, cache_argument: cache, "use_cache": True, **extra}
        if mask is not None:
            arguments["attention_mask"] = mask
        outputs: list[Any] = []
        capture = capture_forward(model, lambda: outputs.append(model(**arguments)), resolver)
        logits, returned = _output_parts(outputs[0], cache_argument)
        if not own_cache:
            cache = returned
        elif hasattr(cache, "get_seq_length") and cache.get_seq_length() > context:
            cache.crop(context - cache.get_seq_length())  # a forward the capture ran twice (Dynamo loading) added twice
        captures.append(capture)
        steps.append(_step(number, ids.shape[1], context, capture, cache))
        ids = logits[:, -1, :].argmax(-1, keepdim=True).to(input_ids.dtype)
        new_tokens.append(ids)
        context += 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)

    uncounted = uncounted_summary([r for c in captures for r in c.records])
    for capture in captures:
        check_counted(capture, uncounted, strict)
    warn_uncounted(uncounted)
    dtype = compute_dtype(model, (), extra)
    return GenerationResult(captures, steps, torch.cat(new_tokens, dim=1), dtype)


class GenerationResult:
    """What ``profile_generation`` found: the prefill as a :class:`ProfileResult`, each decode
    step's totals, the decode steps' layers together (each layer's calls over all steps), and the
    tokens generated."""

    prefill: ProfileResult
    """The prompt's forward: the counts ``profile()`` gives for the same prompt."""
    steps: tuple[GenerationStep, ...]
    """One entry per decode step (the prefill is :attr:`phases`' first)."""
    tokens: torch.Tensor
    """The new tokens, ``[batch, max_new_tokens]``."""

    def __init__(self, captures: Sequence[Capture], phases: Sequence[GenerationStep], tokens: torch.Tensor,
                 dtype: torch.dtype | None = None) -> None:
        modules = captures[0].modules
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
        """Bytes the KV cache holds at the end: ``2 · layers · batch · context · kv heads · head dim · bytes``."""
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
                + (self.decode or self.prefill).html())

    def _repr_html_(self) -> str:
        return self.html()

    def to_dict(self) -> dict[str, Any]:
        """Totals, every phase, and the prefill's and decode steps' reports as plain Python."""
        return {
            "totals": {
                "macs": self.total_macs, "flops": self.total_flops, "matmul_flops": self.matmul_flops,
                "bytes": self.total_bytes, "params": self.total_params, "flops_per_token": self.flops_per_token,
                "kv_cache_bytes": self.kv_cache_bytes, "batch_size": self.batch_size,
                "new_tokens": self.tokens.shape[1],
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
                + (self.decode or self.prefill).html())

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


def _phase_table(result: GenerationResult, roofline: GenerationRoofline | None, units: str, tablefmt: str) -> str:
    headers = _phase_headers(roofline)
    text = tabulate(_phase_body(result, roofline, units), headers, tablefmt=tablefmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))
    lines = [text, ""]
    if result.flops_per_token is not None:
        lines.append(f"Decode: {format_count(round(result.flops_per_token), units)} FLOPs per token per sequence; "
                     f"KV cache {format_bytes(result.kv_cache_bytes)} at the end (batch {result.batch_size}).")
    if roofline is not None and roofline.time_per_token is not None:
        lines.append(f"On {roofline.device.name} ({roofline.peak_dtype}): {format_seconds(roofline.time_per_token)} "
                     f"per decode step, {roofline.tokens_per_second:,.1f} tokens/s over a batch of "
                     f"{result.batch_size}.")
    return "\n".join(lines).rstrip()
