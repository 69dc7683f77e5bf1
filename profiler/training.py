"""``profile_training()``: the cost of one training step, forward and backward, per layer, and the
memory the step needs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hooks import REGISTRY, LossError, ModuleInfo, Record, capture_step, tensors_in
from hooks.counts import count_value
from profiler.api import (
    UncountedWarning, _check_devices, _custom_rules, check_counted, compute_dtype, forward_arguments, warn_uncounted,
)
from profiler.render import TRAINING_COLUMNS
from profiler.result import ProfileResult, RooflineResult
from profiler.roofline import Device
from profiler.tree import Uncounted, sum_counts, uncounted_summary
from profiler.units import format_bytes, format_count, format_seconds

__all__ = ["OPTIMIZERS", "StepMemory", "TrainingResult", "TrainingRoofline", "default_loss", "profile_training",
           "training_summary"]

# Optimizer state kept per trainable parameter, in tensors of the parameter's shape and dtype.
OPTIMIZERS = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}


@dataclass(frozen=True, slots=True)
class StepMemory:
    """Bytes a training step holds at its peak, before the backward frees the activations:
    the parameters and buffers (each storage once), a gradient per trainable parameter, the
    optimizer's state and the activations saved for the backward. Temporary buffers of single
    operators are not included."""

    parameters: int
    buffers: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.buffers + self.gradients + self.optimizer_state + self.activations

    def to_dict(self) -> dict[str, int]:
        return {"parameters": self.parameters, "buffers": self.buffers, "gradients": self.gradients,
                "optimizer_state": self.optimizer_state, "activations": self.activations, "total": self.total}

    def __str__(self) -> str:
        return "\n".join(f"{name.replace('_', ' '):<16} {format_bytes(value):>12}"
                         for name, value in self.to_dict().items())


class TrainingResult(ProfileResult):
    """A :class:`ProfileResult` of one training step: ``macs, params`` unpack as for ``profile()``
    (the forward's MACs), and the backward's counts, the activations and the step's memory are
    added; tables show ``bwd_flops`` and ``act_bytes`` by default."""

    memory: StepMemory
    _default_columns = TRAINING_COLUMNS

    def __new__(cls, modules: Sequence[ModuleInfo], records: Sequence[Record], backward: Sequence[Record],
                activations: Mapping[str, int], uncounted: Sequence[Uncounted], memory: StepMemory,
                dtype: torch.dtype | None = None):
        self = super().__new__(cls, modules, records, None, uncounted, backward=tuple(backward),
                               activations=dict(activations), dtype=dtype)
        self._backward = sum_counts(backward)
        self.memory = memory
        return self

    @property
    def backward_macs(self) -> int:
        """MACs of the backward's matmul-like work (the gradients' matmuls, a recomputed forward's)."""
        return self._backward.macs

    @property
    def backward_flops(self) -> int:
        return self._backward.flops

    @property
    def backward_matmul_flops(self) -> int:
        """FLOPs of the backward's matmul-like work: what FlopCounterMode counts in ``.backward()``."""
        return self._backward.matmul_flops

    @property
    def training_flops(self) -> int:
        """Forward plus backward FLOPs: one training step, the optimizer's update aside."""
        return self.total_flops + self.backward_flops

    @property
    def activation_bytes(self) -> int:
        """Bytes autograd saved for the backward, each storage once, parameters and buffers excluded."""
        return self.memory.activations

    def roofline(self, device: str | Device, dtype: str | torch.dtype | None = None) -> TrainingRoofline:
        """:meth:`ProfileResult.roofline`, still a training result: see :class:`TrainingRoofline`."""
        return TrainingRoofline(self, device, dtype)

    def to_dict(self) -> dict[str, Any]:
        report = super().to_dict()
        report["memory"] = self.memory.to_dict()
        return report

    def __repr__(self) -> str:
        return (f"TrainingResult(macs={format_count(self.total_macs, 'exact')}, "
                f"training_flops={format_count(self.training_flops, 'exact')}, "
                f"params={format_count(self.total_params, 'exact')}, memory={format_bytes(self.memory.total)}"
                + (f", uncounted={sum(u.calls for u in self.uncounted)} calls" if self.uncounted else "") + ")")


class TrainingRoofline(RooflineResult, TrainingResult):
    """A training profile with estimated times on a device (:meth:`TrainingResult.roofline`): a
    :class:`RooflineResult` (``time``, ``bound``, the estimate columns, the ``roofline`` export) that
    is still a :class:`TrainingResult` (``memory``, the backward's counts, ``training_flops``,
    ``activation_bytes``, the ``memory`` export), with the figures of the result it came from."""

    source: TrainingResult

    def __new__(cls, result: TrainingResult, device: str | Device, dtype: str | torch.dtype | None = None):
        self = super().__new__(cls, result, device, dtype)
        self._backward, self.memory = result._backward, result.memory
        return self

    def __repr__(self) -> str:
        return (f"TrainingRoofline(device={self.device.name!r}, dtype={self.peak_dtype}, time={format_seconds(self.time)}, "
                f"training_flops={format_count(self.training_flops, 'exact')}, memory={format_bytes(self.memory.total)}, "
                f"bound={self.bound!r})")


def training_summary(result: TrainingResult, units: str = "human") -> str:
    """Two lines under a training table: the step's FLOPs, and its memory by part."""
    memory = result.memory

    def count(n: int) -> str:
        return format_count(n, units)

    def size(n: int) -> str:
        return format_bytes(n, units) + (" bytes" if units == "exact" else "")

    return (f"Training step: {count(result.training_flops)} FLOPs (forward {count(result.total_flops)}, "
            f"backward {count(result.backward_flops)})\n"
            f"Memory: {size(memory.total)} (parameters {size(memory.parameters)}, gradients "
            f"{size(memory.gradients)}, optimizer {size(memory.optimizer_state)}, activations "
            f"{size(memory.activations)}" + (f", buffers {size(memory.buffers)}" if memory.buffers else "") + ")")


def default_loss(output: Any) -> torch.Tensor:
    """The model's own loss when its output carries one (Hugging Face models given ``labels``),
    else the sum of every floating-point tensor in the output that requires grad; an output it
    cannot use or sum (a strided nested tensor) raises :class:`LossError` saying to pass ``loss=``."""
    own = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(own, torch.Tensor) and own.requires_grad:
        return own
    found = list(tensors_in(output))
    tensors = [t for t in found if t.is_floating_point() and t.requires_grad]
    if not tensors:
        if not found:  # a type the search does not open: a plain object holding tensors in attributes
            why = (f"the model's output ({type(output).__name__}) holds no tensor the default loss can find: it "
                   "searches tuples, lists, mappings, dataclasses and types registered with torch.utils._pytree.")
        elif not any(t.is_floating_point() for t in found):
            kinds = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in found}))
            why = f"the model's output holds no floating-point tensor (only {kinds}), so nothing has a gradient."
        else:
            why = ("the model's output holds no floating-point tensor that requires grad, so there is no backward "
                   "to count: is every parameter frozen?")
        raise LossError(f"{why} Pass loss=lambda output: ... giving the scalar to differentiate")
    loss = None
    for tensor in tensors:
        try:
            loss = tensor.sum() if loss is None else loss + tensor.sum()
        except Exception as exc:  # a layout sum() does not take (a strided nested tensor), a dtype mix
            raise LossError(f"the default loss (the sum of the output's floating-point tensors that require grad) "
                            f"failed on {_described(tensor)} in the model's output ({type(output).__name__}): "
                            f"{type(exc).__name__}: {_first_line(exc)} Pass loss=lambda output: ... giving the scalar "
                            "to differentiate") from exc
    return loss


def _first_line(exc: BaseException) -> str:
    """An error's first sentence (torch's dispatch errors go on to list every backend)."""
    line = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return f"{line}." if line else ""


def _described(tensor: torch.Tensor) -> str:
    """A tensor named by its kind, for an error: a nested one has no single shape."""
    if tensor.is_nested:
        return f"a nested {tensor.dtype} tensor ({str(tensor.layout).removeprefix('torch.')} layout)"
    return f"a {tensor.dtype} tensor of shape {list(tensor.shape)} ({str(tensor.layout).removeprefix('torch.')})"


def _nbytes(tensor: torch.Tensor) -> int:
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):  # a lazy module never called
        return 0
    return tensor.numel() * tensor.element_size()


def _storages(tensors: Sequence[torch.Tensor]) -> dict[int, int]:
    """The bytes of each storage ``tensors`` view, by storage: tensors sharing one count it once,
    whole; a tensor with no single storage (sparse, nested) counts its own elements."""
    sizes: dict[int, int] = {}
    for tensor in tensors:
        try:
            storage = tensor.untyped_storage()
            sizes[storage._cdata] = storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            sizes[id(tensor)] = _nbytes(tensor)
    return sizes


def step_memory(params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor], activations: int,
                optimizer: str | Callable | None, trainable: Sequence[bool] | None = None) -> StepMemory:
    """The memory of a training step with ``optimizer``: see :class:`StepMemory`. The parameters
    and buffers are the storages they use, each once (two Parameters viewing one storage, a
    buffer viewing a parameter's); the gradients and the optimizer's state are per trainable
    Parameter, as torch allocates them: each Parameter gets a ``.grad`` and a state of its own,
    even when it shares its storage with another. ``trainable`` is each parameter's
    ``requires_grad`` during the step (``model.train()`` may unfreeze a backbone), default now."""
    flags = [p.requires_grad for p in params] if trainable is None else trainable
    trainable = [p for p, grad in zip(params, flags, strict=True) if grad]
    if optimizer is None:
        state = 0
    elif callable(optimizer):
        state = 0
        for p in trainable:
            state += count_value(optimizer(p), f"optimizer({tuple(p.shape)} parameter)")
    elif optimizer in OPTIMIZERS:
        state = OPTIMIZERS[optimizer] * sum(_nbytes(p) for p in trainable)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}, or a callable "
                         "giving the bytes of state it keeps for a parameter")
    parameters = _storages(params)
    buffers_only = {key: size for key, size in _storages(buffers).items() if key not in parameters}
    return StepMemory(
        parameters=sum(parameters.values()),
        buffers=sum(buffers_only.values()),
        gradients=sum(_nbytes(p) for p in trainable),
        optimizer_state=state,
        activations=activations,
    )


def profile_training(
    model: nn.Module,
    inputs: Any = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    loss: Callable[[Any], torch.Tensor] | None = None,
    input_size: Any = None,
    input_dtype: torch.dtype | None = None,
    optimizer: str | Callable[[nn.Parameter], int] | None = None,
    custom_ops: Mapping[type, Callable] | None = None,
    strict: bool = False,
) -> TrainingResult:
    """Count one training step of ``model``: a forward in training mode with grad enabled, the
    loss, and its backward, per layer; and the memory the step needs.

    ``inputs``, ``kwargs``, ``input_size``, ``input_dtype``, ``custom_ops`` and ``strict`` are as in
    :func:`profiler.profile`. ``loss(output)`` gives the scalar to differentiate (default
    :func:`default_loss`: the output's own ``loss``, else the sum of its floating-point tensors);
    it is counted in the model's own row. ``optimizer`` ("sgd", "sgd_momentum", "adam", "adamw",
    or ``fn(parameter) -> bytes``) sizes the optimizer state in :attr:`TrainingResult.memory`.

    The backward is measured, not estimated: the operators autograd runs, each counted by the
    aten-level rules and attributed to the layer whose forward made it necessary. A frozen layer
    costs only its input's gradient, the first layer no input gradient, a checkpointed block its
    forward twice. The model comes back as it was: training flags, every parameter's ``.grad``,
    buffers (BatchNorm's running statistics) and the global random state.

    The inputs reach the forward as given (the same objects, whatever their container). An input
    that requires grad costs its gradient, and the backward stops there: the graph that made it
    (another model's output) is not run. Every input's own ``.grad`` is left as it was, also of
    one the forward makes require grad.
    """
    if isinstance(model, type):
        raise TypeError(f"model must be an nn.Module instance, not the class {model.__name__}; call it first")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable loss(output) -> scalar tensor, not {loss!r}")
    if optimizer is not None and not callable(optimizer) and optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}, or a callable "
                         "giving the bytes of state it keeps for a parameter")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("profile_training cannot run under torch.inference_mode(), which allows no backward; "
                           "call it outside that block")
    args = forward_arguments(model, inputs, input_size, input_dtype, kwargs)
    forward_kwargs = dict(kwargs or {})
    _check_devices(model, args, forward_kwargs)
    resolver = REGISTRY.resolver(_custom_rules(custom_ops))

    # The inputs go to the forward untouched, and the backward stops at the ones that require grad:
    # it costs their gradients, not the graph that made them. Their edges are taken now, before an
    # in-place operation in the forward moves them.
    found = list({id(t): t for t in tensors_in((args, forward_kwargs))}.values())
    wanting = [t for t in found if t.requires_grad]
    # and a view's base: an in-place operation on the view in the forward rewrites the base's history
    ends = [*wanting, *(t._base for t in wanting if t._base is not None)]
    stops = [torch.autograd.graph.get_gradient_edge(t) for t in ends if t.grad_fn is not None]
    # every input's .grad, not only those requiring grad now: the forward may make one require grad
    # (x.requires_grad_()), and the step's backward would then accumulate into it
    grads = [(t, t.grad) for t in found if t.is_leaf or t.retains_grad]
    try:
        for tensor, _ in grads:  # written, not added to, as the parameters' are
            tensor.grad = None
        step = capture_step(model, lambda: model(*args, **forward_kwargs), loss or default_loss, resolver, stops)
    finally:
        for tensor, grad in grads:  # the caller's, as they were
            tensor.grad = grad
    uncounted = uncounted_summary(step.forward.records) + tuple(
        Uncounted(f"backward {u.kind}", u.name, u.calls, u.layers) for u in uncounted_summary(step.backward))
    check_counted(step.forward, uncounted, strict, training=True)
    if step.rolled_back or step.forward.other_threads:
        undone = (f"restoring the model as it was before the profile rolled back that thread's work on "
                  f"{', '.join(step.rolled_back)}" if step.rolled_back
                  else "restoring the model rolled back none of that thread's buffer updates, gradients or random "
                       "draws")
        warnings.warn(f"another thread used the model while profile_training held it; {undone}; profile when no "
                      "other thread trains the model", UncountedWarning, stacklevel=2)
    if step.outside:
        warnings.warn(f"the backward went past the model's inputs into the graph that made them ({step.outside} "
                      "operators, not counted; the .grad of tensors outside the model may be set): an input that "
                      "requires grad sits where profile_training does not look (it searches tuples, lists, "
                      "mappings and dataclasses), or the model uses a reentrant checkpoint (use_reentrant=True), "
                      "which lets no backward stop at its inputs; pass such an input detached", UncountedWarning,
                      stacklevel=2)
    warn_uncounted(uncounted)
    memory = step_memory(step.parameters, step.buffers, sum(step.activations.values()), optimizer, step.trainable)
    return TrainingResult(step.forward.modules, step.forward.records, step.backward, step.activations, uncounted,
                          memory, compute_dtype(model, args, forward_kwargs))
