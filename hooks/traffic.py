"""Bytes a call moves, from shapes, strides and dtypes only (so it works on the meta device).

The convention is unfused traffic: each call reads its input tensors (and a module call the
parameters and buffers it holds) from memory and writes its outputs back, as eager PyTorch runs
it. A fused kernel moves less: it keeps its intermediates on chip.

- Each tensor counts the bytes of the elements it addresses: a view counts its own elements, not
  its storage's, and an expanded (stride 0) dimension is read once.
- Within one call each tensor's memory is counted once, at its largest view from the same address:
  ``x + x`` reads ``x`` once, and ``torch.addmm(b, w, w.t())`` reads ``w`` once.
- A gather (an embedding, ``index_select``, ``x[indices]``) reads its indices and the rows it
  returns, not its whole table: a language model's embedding reads one row per token.
- A call whose output is a view of its input (``view``, ``transpose``, ``contiguous()`` of a
  contiguous tensor) moves nothing, nor does one that changes an input's metadata in place
  (``unsqueeze_``, ``requires_grad_``).
- A factory reads nothing (``zeros_like`` writes its output; ``empty_like`` not even that); an
  overwrite (``copy_``, ``fill_``, ``zero_``) does not read what it overwrites; a scatter into a
  tensor (``index_copy_``, ``index_put_``, ``x[i] = v``) reads its indices and values and writes
  the values, not the whole tensor.
- Under ``torch.vmap`` a tensor counts as the batch it stands for; an unbatched one (a weight) once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GATHER_MODULES", "GATHERS", "METADATA_IN_PLACE", "call_traffic", "embedding_bag_traffic", "free_call_traffic",
    "module_tensors", "nbytes", "tensor_bytes", "traffic",
]

_STRIDED = torch.strided
_Tensor = torch.Tensor

# gathers: they read the indices and the rows they return, not the whole table
GATHERS = frozenset({
    F.embedding, torch.embedding, torch.index_select, torch.Tensor.index_select, torch.gather, torch.Tensor.gather,
    torch.take, torch.Tensor.take, torch.take_along_dim, torch.Tensor.take_along_dim, torch.Tensor.__getitem__,
    torch.masked_select, torch.Tensor.masked_select,
    torch.ops.aten.embedding.default, torch.ops.aten.index_select.default, torch.ops.aten.gather.default,
    torch.ops.aten.index.Tensor, torch.ops.aten._unsafe_index.Tensor, torch.ops.aten.take.default,
})
GATHER_MODULES = (nn.Embedding,)

# in place, by the operator's name: what they read and write
METADATA_IN_PLACE = frozenset({
    "unsqueeze_", "squeeze_", "t_", "transpose_", "swapaxes_", "swapdims_", "detach_", "requires_grad_",
    "as_strided_", "resize_as_", "set_",
})
"""In-place calls that change an input's metadata only: they move nothing."""
_OVERWRITES = frozenset({"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_"})
_SCATTERS = frozenset({"index_copy_", "index_put_", "scatter_", "masked_scatter_", "__setitem__", "_index_put_impl_"})
_EMPTY = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the elements ``t`` addresses; an expanded (stride 0) dimension counts once."""
    if t.layout != _STRIDED:
        try:
            return t.values().nbytes  # sparse: the stored values
        except (RuntimeError, NotImplementedError):
            return 0
    n = t.nbytes
    if n and not t.is_contiguous():
        for size, stride in zip(t.shape, t.stride()):
            if stride == 0 and size > 1:
                n //= size
    return n


def _key_and_bytes(t: torch.Tensor) -> tuple[Any, int]:
    """Where ``t``'s elements start (its address; its storage and offset on the meta device, where
    every address is 0) and their bytes."""
    try:
        n = t.nbytes
        if n and not t.is_contiguous():
            n = tensor_bytes(t)
        return t.data_ptr() or (t.untyped_storage()._cdata, t.storage_offset()), n
    except (RuntimeError, NotImplementedError, TypeError):  # no storage: a functorch wrapper, a sparse tensor
        functorch = torch._C._functorch
        if functorch.is_functorch_wrapped_tensor(t):  # under vmap: the batch it stands for
            while functorch.is_functorch_wrapped_tensor(t):
                t = functorch.get_unwrapped(t)
            return _key_and_bytes(t)
        return id(t), tensor_bytes(t)


def nbytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` as :func:`traffic` counts them (a vmapped tensor's batch included)."""
    return _key_and_bytes(t)[1]


def traffic(value: Any, seen: dict, integral_only: bool = False) -> int:
    """Bytes of the tensors in ``value`` (searched through tuples, lists and dicts) that ``seen``
    has not counted yet; ``seen`` maps where a tensor starts to the bytes counted there.
    ``integral_only`` counts integer and boolean tensors only (a gather's indices)."""
    if isinstance(value, _Tensor):
        value = (value,)
    elif isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (tuple, list)):
        return 0
    total = 0
    for item in value:  # a loop with the work inline: this runs for every call a capture sees
        if isinstance(item, _Tensor):
            if integral_only and (item.is_floating_point() or item.is_complex()):
                continue
            key, n = _key_and_bytes(item)
            before = seen.get(key, 0)
            if n > before:
                seen[key] = n
                total += n - before
        elif isinstance(item, (tuple, list, dict)):
            total += traffic(item, seen, integral_only)
    return total


def module_tensors(module: nn.Module, leaf: bool) -> list[torch.Tensor]:
    """The parameters and buffers a module call reads: its own, and for a module counted as a
    whole (a ruled module with children), its subtree's; a quantized module's packed weights."""
    tensors = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None] if leaf \
        else [*module.parameters(), *module.buffers()]
    if callable(getattr(module, "_weight_bias", None)):  # packed: not parameters
        try:
            tensors += [t for t in module._weight_bias() if isinstance(t, torch.Tensor)]
        except (RuntimeError, AttributeError, TypeError):
            pass
    return tensors


def call_traffic(args: tuple, kwargs: dict | None, output: Any, held: list[torch.Tensor] = (),
                 gather: bool = False) -> tuple[int, int]:
    """``(bytes_read, bytes_written)`` of one call: its ``args`` and ``kwargs`` and the ``held``
    parameters and buffers read, ``output`` written. A gather reads its integer inputs (the
    indices) and what it writes."""
    written = nbytes(output) if isinstance(output, _Tensor) else traffic(output, {})
    seen: dict = {}
    if gather:
        return traffic(args, seen, True) + (traffic(kwargs, seen, True) if kwargs else 0) + written, written
    read = traffic(args, seen)
    if kwargs:
        read += traffic(kwargs, seen)
    if held:
        read += traffic(held, seen)
    return read, written


def free_call_traffic(name: str, args: tuple, kwargs: dict, output: Any, gather: bool,
                      in_place: bool) -> tuple[int, int]:
    """``(bytes_read, bytes_written)`` of a call with no arithmetic that moves data: a copy, a
    gather, a factory, an overwrite or a scatter (``name`` is the function's or operator's, ``in_place``
    whether it wrote into its first argument)."""
    if name in _EMPTY:
        return 0, 0  # uninitialised memory: nothing read or written
    if name.endswith("_like") or name.startswith("new_"):
        return 0, traffic(output, {})  # a factory: writes its output from nothing
    if in_place and (name in _OVERWRITES or name in _SCATTERS):
        rest = args[1:]
        read = traffic(rest, {}) + (traffic(kwargs, {}) if kwargs else 0)
        if name in _OVERWRITES:
            return read, traffic(args[:1], {})
        values = traffic(rest, {}) - traffic(rest, {}, integral_only=True)  # the floating tensors written
        return read, values if values else traffic(args[:1], {})
    return call_traffic(args, kwargs, output, gather=gather)


def embedding_bag_traffic(indices: torch.Tensor, weight: torch.Tensor, others: tuple,
                          output: torch.Tensor) -> tuple[int, int]:
    """An embedding bag reads its indices (offsets, per-sample weights) and one row per index,
    and writes one row per bag."""
    rows = indices.numel() * (weight.shape[-1] if weight.dim() else 1) * weight.element_size()
    return traffic((indices, *others), {}) + rows, nbytes(output)
