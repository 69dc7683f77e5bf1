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
    if n and not t.is_contiguous() and not t.is_nested:  # a nested tensor has no one shape: never expanded
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
    if in_place and (name in _OVERWRITES or name in _SCATTERS) and args and isinstance(args[0], _Tensor):
        rest = args[1:]
        read = traffic(rest, {}) + (traffic(kwargs, {}) if kwargs else 0)
        if name in _OVERWRITES:
            return read, traffic(args[:1], {})
        written = _scattered(name, args, kwargs) * args[0].element_size()
        if kwargs.get("accumulate") or (len(args) > 3 and args[3] is True and name == "index_put_"):
            read += written  # adds into what is there
        return read, written
    return call_traffic(args, kwargs, output, gather=gather)


def _scattered(name: str, args: tuple, kwargs: dict) -> int:
    """Elements a scatter into ``args[0]`` writes: the region its indices select."""
    dest = args[0]
    try:
        if name in ("__setitem__", "_index_put_impl_", "index_put_"):
            index = args[1]
            if name == "__setitem__":
                index = index if isinstance(index, tuple) else (index,)
                if not any(isinstance(i, _Tensor) for i in index):
                    return dest[index].numel()  # a basic index: a view, nothing copied
            return _indexed(dest, [i for i in index])
        if name in ("index_copy_", "index_fill_"):
            dim, index = args[1], args[2]
            return index.numel() * (dest.numel() // max(dest.shape[dim], 1)) if dest.dim() else index.numel()
        if name == "scatter_":
            return args[2].numel()  # one element per index
        if name == "masked_scatter_":
            return min(args[2].numel(), dest.numel())
    except (IndexError, TypeError, RuntimeError, AttributeError):
        pass
    return dest.numel()


def _indexed(dest: torch.Tensor, index: list) -> int:
    """Elements ``dest[index]`` selects, for an advanced index (tensors, and slices or ints beside them)."""
    tensors = [i for i in index if isinstance(i, _Tensor)]
    selected = 1
    dims = 0
    for i in tensors:
        if i.dtype == torch.bool:
            selected *= int(i.count_nonzero()) if i.device.type != "meta" else i.numel()
            dims += i.dim()
        else:
            dims += 1
    if tensors and all(i.dtype != torch.bool for i in tensors):
        selected = torch.broadcast_shapes(*(i.shape for i in tensors)).numel()
    rest = 1
    for size in dest.shape[dims:]:
        rest *= size
    return selected * rest


def embedding_bag_traffic(indices: torch.Tensor, weight: torch.Tensor, others: tuple,
                          output: torch.Tensor) -> tuple[int, int]:
    """An embedding bag reads its indices (offsets, per-sample weights) and one row per index,
    and writes one row per bag."""
    rows = indices.numel() * (weight.shape[-1] if weight.dim() else 1) * weight.element_size()
    return traffic((indices, *others), {}) + rows, nbytes(output)
