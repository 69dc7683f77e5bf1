"""``profile()``: thop's entry point, counting with the hook registry."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hooks import REGISTRY, Rule, capture_forward, custom_rule
from hooks.capture import Capture, modules_by_name
from hooks.timing import time_modules
from profiler.result import ProfileResult
from profiler.tree import Uncounted, uncounted_summary

__all__ = ["profile", "forward_arguments", "check_counted", "warn_uncounted", "UncountedError", "UncountedWarning"]


class UncountedWarning(UserWarning):
    """Some layers or torch functions ran without a rule; their work is not in the totals."""


class UncountedError(RuntimeError):
    """``strict=True`` and some layers or torch functions ran without a rule."""


def _normalise_inputs(inputs: Any) -> tuple:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    hint = " (pass keyword arguments as kwargs=...)" if isinstance(inputs, Mapping) else ""
    raise TypeError(f"inputs must be a tensor or a tuple/list of forward's arguments, not {type(inputs).__name__}{hint}")


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's first floating-point parameter or buffer lives (CPU float32 if none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def compute_dtype(model: nn.Module, args: tuple, kwargs: Mapping[str, Any] | None = None) -> torch.dtype:
    """The dtype a forward computes in, for the roofline's peak: the model's first floating-point
    parameter or buffer's, else its first floating-point input's, else the default dtype."""
    for tensor in (*model.parameters(), *model.buffers(), *args, *(kwargs or {}).values()):
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _random_inputs(model: nn.Module, input_size: Any, input_dtype: torch.dtype | None) -> tuple:
    """One tensor per size: uniform [0, 1) on the model's device and dtype; zeros (a valid token
    id everywhere) for an integer ``input_dtype``."""
    sequence = (tuple, list, torch.Size)
    nested = isinstance(input_size, sequence) and input_size and isinstance(input_size[0], sequence)
    sizes = list(input_size) if nested else [input_size]
    for size in sizes:
        if not isinstance(size, (tuple, list, torch.Size)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in size
        ):
            raise ValueError(
                f"input_size must be a sequence of non-negative ints or a list of them, e.g. (1, 3, 224, 224); got {input_size!r}"
            )
    device, dtype = _device_and_dtype(model)
    dtype = input_dtype or dtype
    if dtype.is_floating_point or dtype.is_complex:
        return tuple(torch.rand(tuple(size), dtype=dtype, device=device) for size in sizes)
    return tuple(torch.zeros(tuple(size), dtype=dtype, device=device) for size in sizes)


def forward_arguments(
    model: nn.Module, inputs: Any, input_size: Any, input_dtype: torch.dtype | None, kwargs: Mapping | None
) -> tuple:
    """The positional arguments for ``forward``: ``inputs`` normalised, or built from ``input_size``."""
    if inputs is not None and input_size is not None:
        raise TypeError("pass either inputs= or input_size=, not both")
    if inputs is None and input_size is None and not kwargs:
        raise TypeError("nothing to call forward with: pass inputs=(x,), input_size=(...) or kwargs={...}")
    if input_dtype is not None and input_size is None:
        raise TypeError("input_dtype= goes with input_size=")
    if input_size is not None:
        return _random_inputs(model, input_size, input_dtype)
    return () if inputs is None else _normalise_inputs(inputs)


def _check_devices(model: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Inputs on another device than a single-device model: say which, before running."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is None:
        return
    named = [(f"inputs[{i}]", a) for i, a in enumerate(args)] + [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
    for where, value in named:
        if not isinstance(value, torch.Tensor) or not value.dim() or value.device == first.device:
            continue
        devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
        if len(devices) == 1:  # a model spread over devices on purpose is left alone
            raise ValueError(
                f"the model is on {first.device} but {where} is on {value.device}; "
                f"move one of them, e.g. {where}.to('{first.device}') or model.to('{value.device}')"
            )


def _custom_rules(custom_ops: Mapping[type, Callable] | None) -> dict[type, Rule]:
    rules = {}
    for key, fn in (custom_ops or {}).items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise TypeError(f"custom_ops keys must be nn.Module subclasses, not {key!r}")
        if not callable(fn):
            raise TypeError(f"custom_ops[{key.__name__}] must be callable fn(module, inputs, output), not {fn!r}")
        rules[key] = custom_rule(fn)
    return rules


def profile(
    model: nn.Module,
    inputs: Any = None,
    custom_ops: Mapping[type, Callable] | None = None,
    verbose: bool = False,
    ret_layer_info: bool = False,
    report_missing: bool = False,
    *,
    kwargs: Mapping[str, Any] | None = None,
    input_size: Any = None,
    input_dtype: torch.dtype | None = None,
    measure_time: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    strict: bool = False,
) -> ProfileResult:
    """Count the MACs, FLOPs and parameters of one forward pass of ``model``.

    ``inputs`` is a tensor or a tuple of ``forward``'s positional arguments (a lone tensor is one
    argument; thop would unpack it along its first dimension); ``kwargs`` go to ``forward`` by
    keyword. The forward runs once in eval mode under ``torch.no_grad()``; the model comes back
    exactly as it was. Only the calling thread's work is counted: layers the forward hands to
    other threads are named in an :class:`UncountedWarning`. ``custom_ops`` maps module types to thop-style rules
    ``fn(module, inputs, output)``. Returns a :class:`ProfileResult`, which unpacks as
    ``macs, params`` (``macs, params, layer_info`` with ``ret_layer_info=True``).

    ``input_size=(1, 3, 224, 224)`` (or a list of sizes) builds random inputs instead, on the
    model's device and dtype (``input_dtype=torch.long`` for token ids: zeros).
    ``measure_time=True`` then times every layer: ``warmup`` forwards, then the median of
    ``repeats`` timed forwards (CUDA synchronised), in separate passes after the counting one.
    ``strict=True`` raises :class:`UncountedError` if anything ran without a rule or in another
    thread.
    """
    if isinstance(model, type):
        raise TypeError(f"model must be an nn.Module instance, not the class {model.__name__}; call it first")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    args = forward_arguments(model, inputs, input_size, input_dtype, kwargs)
    if measure_time and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"repeats must be a positive integer, not {repeats!r}")
    if measure_time and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
        raise ValueError(f"warmup must be an integer >= 0, not {warmup!r}")
    forward_kwargs = dict(kwargs or {})
    _check_devices(model, args, forward_kwargs)
    resolver = REGISTRY.resolver(_custom_rules(custom_ops))

    def call() -> Any:
        return model(*args, **forward_kwargs)

    result = capture_forward(model, call, resolver)
    uncounted = uncounted_summary(result.records)
    check_counted(result, uncounted, strict)
    times = timed_on = None
    if measure_time:
        named = modules_by_name(model, resolver)
        # reversed: a shared module is timed under its first name, which the dict keeps last
        timed = [(named[info.name], info.name) for info in reversed(result.modules) if not info.covered]
        on_cuda = any(t.is_cuda for t in (*args, *forward_kwargs.values(), *model.parameters()) if isinstance(t, torch.Tensor))
        times = time_modules(model, call, timed, repeats=repeats, warmup=warmup, synchronize=on_cuda)
        timed_on = "cuda" if on_cuda else "cpu"

    if verbose:
        for rule_name, types in _rules_used(result.modules).items():
            print(f"[INFO] {rule_name}() counts {', '.join(types)}")
        for note in result.notes:
            print(f"[INFO] {note}")
    if report_missing:
        for u in uncounted:
            print(f"[WARN] no rule for {u.kind} {u.name} ({u.calls} calls in {', '.join(u.layers)}); not counted")
    warn_uncounted(uncounted)
    return ProfileResult(result.modules, result.records, times, uncounted, ret_layer_info=ret_layer_info,
                         dtype=compute_dtype(model, args, forward_kwargs), timed_on=timed_on)


def check_counted(capture: Capture, uncounted: Sequence[Uncounted], strict: bool, training: bool = False) -> None:
    """Raise :class:`UncountedError` (``strict``) or warn when something was not counted: calls
    without a rule, a forward that ran nothing, layers called from other threads."""
    if strict and uncounted:
        listing = "; ".join(f"{u.kind} {u.name} ×{u.calls} (in {', '.join(repr(n) if n else 'the model' for n in u.layers)})"
                            for u in uncounted)
        raise UncountedError(f"strict=True and these ran without a rule: {listing}")
    if capture.idle or capture.lazy_output:
        message = _idle_message(capture)
        if strict:
            raise UncountedError(f"strict=True and {message}")
        warnings.warn(message, UncountedWarning, stacklevel=3)
    if capture.other_threads:
        listing = ", ".join(f"'{name}' ×{calls}" for name, calls in Counter(capture.other_threads).items())
        seen = ("in training mode with grad enabled in the profiling thread (training flags are shared by all "
                "threads)") if training else ("in eval mode (training flags are shared by all threads: Dropout was "
                                              "off, and BatchNorm normalised with its running statistics and did not "
                                              "update them)")
        message = (f"layers called from other threads while profiling were not counted: {listing}; "
                   f"only the calling thread's work is counted, and those calls ran with the model {seen}")
        if strict:
            raise UncountedError(f"strict=True and {message}")
        warnings.warn(message, UncountedWarning, stacklevel=3)


def _idle_message(capture: Capture) -> str:
    """What an idle forward (:attr:`hooks.capture.Capture.idle`), or one returning a lazy
    iterator, did, and what to do."""
    if capture.ran_nothing:
        what = "the forward ran no layer and no torch function: nothing was counted"
    elif not capture.idle:
        what = "the forward's counts leave out the work of its output"
    else:
        held = sum(info.params for info in capture.modules)
        what = "the forward counted nothing" + (
            f" and ran none of the layers holding the model's {held:,} parameters" if held else "")
    if capture.lazy_output:
        return (f"{what}; it returned a {capture.lazy_output}, whose work runs only when it is consumed, after "
                "profiling: consume it inside forward (return a tuple or list, e.g. tuple(self.layer(t) for t in x))")
    return f"{what} (does forward return before calling its layers, or return its input or an index of it?)"


def warn_uncounted(uncounted: Sequence[Uncounted]) -> None:
    """The :class:`UncountedWarning` listing what ran without a rule, for the caller's caller."""
    if uncounted:
        listing = "; ".join(f"{u.name} ×{u.calls}" + (" in the backward" if u.kind.startswith("backward") else "")
                            for u in uncounted)
        warnings.warn(f"ran without a rule, not counted: {listing}", UncountedWarning, stacklevel=3)


def _rules_used(modules) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for info in modules:
        if info.rule is not None and info.type not in used.get(info.rule, []):
            used.setdefault(info.rule, []).append(info.type)
    return used
