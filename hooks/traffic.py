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
  contiguous tensor) moves nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GATHER_MODULES", "GATHERS", "call_traffic", "module_tensors", "tensor_bytes", "traffic"]

# gathers: they read the indices and the rows they return, not the whole table
GATHERS = frozenset({
    F.embedding, torch.embedding, torch.index_select, torch.Tensor.index_select, torch.gather, torch.Tensor.gather,
    torch.take, torch.Tensor.take, torch.take_along_dim, torch.Tensor.take_along_dim, torch.Tensor.__getitem__,
    torch.masked_select, torch.Tensor.masked_select, F.embedding_bag,
    torch.ops.aten.embedding.default, torch.ops.aten.index_select.default, torch.ops.aten.gather.default,
    torch.ops.aten.index.Tensor, torch.ops.aten._unsafe_index.Tensor, torch.ops.aten.take.default,
})
GATHER_MODULES = (nn.Embedding, nn.EmbeddingBag)


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


_STRIDED = torch.strided
_Tensor = torch.Tensor


def _key_and_bytes(t: torch.Tensor) -> tuple[Any, int]:
    """Where ``t``'s elements start (its address; its storage and offset on the meta device, where
    every address is 0) and their bytes."""
    try:
        n = t.nbytes
        if n and not t.is_contiguous():
            n = tensor_bytes(t)
        return t.data_ptr() or (t.untyped_storage()._cdata, t.storage_offset()), n
    except (RuntimeError, NotImplementedError, TypeError):  # no storage: a functorch wrapper, a sparse tensor
        return id(t), tensor_bytes(t)


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
    whole (a ruled module with children), its subtree's."""
    if leaf:
        return [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
    return [*module.parameters(), *module.buffers()]


def call_traffic(args: tuple, kwargs: dict | None, output: Any, held: list[torch.Tensor] = (),
                 gather: bool = False) -> tuple[int, int]:
    """``(bytes_read, bytes_written)`` of one call: its ``args`` and ``kwargs`` and the ``held``
    parameters and buffers read, ``output`` written. A gather reads its integer inputs (the
    indices) and what it writes."""
    written = tensor_bytes(output) if isinstance(output, _Tensor) else traffic(output, {})
    seen: dict = {}
    if gather:
        return traffic(args, seen, True) + (traffic(kwargs, seen, True) if kwargs else 0) + written, written
    read = traffic(args, seen)
    if kwargs:
        read += traffic(kwargs, seen)
    if held:
        read += traffic(held, seen)
    return read, written
