"""Roofline estimates: how long each layer would take on a named accelerator.

A call takes at least its FLOPs over the device's peak FLOP/s for the dtype, and at least its
bytes over the memory bandwidth; the estimate is the larger of the two, and the call is
compute-bound or memory-bound by which one it is. A layer's estimate adds up its calls' (its
rule's call, each torch function it called itself, its copies, its backward's operators) and its
children's; it is bound by the roof its calls spend most of their time against. The bytes
are the unfused traffic of :mod:`hooks.traffic`; every FLOP is taken at the dtype's peak
(elementwise work runs slower off the tensor cores, and kernels rarely reach either peak), so
the estimate is a lower bound on the time.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from hooks import Record
from profiler.tree import Layer

__all__ = ["DEVICES", "DTYPES", "Device", "call_times", "dtype_name", "estimate", "estimated_tree", "lookup_device"]


@dataclass(frozen=True)
class Device:
    """An accelerator's dense peak FLOP/s per dtype name and its memory bandwidth in bytes/s.

    ``flops`` keys are dtype names (``"bfloat16"``, ``"float16"``, ``"float32"``, ``"tf32"``,
    ``"float8"``, ``"int8"``); ``torch.float32`` matmuls run at the ``"tf32"`` peak only when
    you ask for it (``dtype="tf32"``), as they do with ``torch.backends.cuda.matmul.allow_tf32``.
    Figures may be any real numbers (numpy scalars too) and are kept as floats. A device is
    read-only: its ``flops`` is a read-only mapping, so the table in :data:`DEVICES` stays as published.
    """

    name: str
    flops: Mapping[str, float]
    bandwidth: float
    memory: float | None = field(default=None, compare=False)
    """Bytes of device memory, for reference."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, not {type(self.name).__name__}")
        if not isinstance(self.flops, Mapping):
            raise TypeError(f"flops must be a mapping of dtype name to peak FLOP/s, e.g. {{'bfloat16': 989e12}}, "
                            f"not {type(self.flops).__name__}")
        bandwidth = _figure(self.bandwidth, "bandwidth")
        if bandwidth is None:
            raise ValueError(f"bandwidth must be a positive, finite number of bytes per second, not {self.bandwidth!r}")
        memory = None if self.memory is None else _figure(self.memory, "memory")
        if self.memory is not None and memory is None:
            raise ValueError(f"memory must be None or a positive, finite number of bytes, not {self.memory!r}")
        given = dict(self.flops)
        peaks = {k: _figure(v, f"flops[{k!r}]") for k, v in given.items()}
        if not given or not all(isinstance(k, (str, torch.dtype)) and v is not None for k, v in peaks.items()):
            raise ValueError(f"flops must map dtype names to positive, finite peak FLOP/s, not {given!r}")
        flops = {dtype_name(k): v for k, v in peaks.items()}
        unknown = [k for k in flops if k not in DTYPES]
        if unknown:
            raise ValueError(f"unknown dtype name(s) {', '.join(map(repr, unknown))} in flops; known: {', '.join(DTYPES)}")
        if len(flops) < len(given):
            raise ValueError(f"flops names one dtype twice (float8 kinds share one peak): {given!r}")
        object.__setattr__(self, "flops", MappingProxyType(flops))
        object.__setattr__(self, "bandwidth", bandwidth)
        object.__setattr__(self, "memory", memory)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.flops.items())), self.bandwidth))

    def __reduce__(self) -> tuple:
        """Pickle and copy by the arguments: the read-only ``flops`` mapping cannot be pickled itself."""
        return Device, (self.name, dict(self.flops), self.bandwidth, self.memory)

    def peak(self, dtype: str | torch.dtype) -> float:
        """Peak dense FLOP/s for ``dtype``; ValueError listing the dtypes this device has figures for."""
        name = dtype_name(dtype)
        try:
            return self.flops[name]
        except KeyError:
            raise ValueError(f"{self.name} has no peak FLOP/s for {name}; it has {', '.join(self.flops)}") from None


def _figure(value: Any, what: str) -> float | None:
    """``value`` as a float if it is a positive, finite real number (a numpy scalar too; not a
    bool), else None; a ValueError naming ``what`` for a number too large to be a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        figure = float(value)
    except OverflowError:
        raise ValueError(f"{what} is too large to be a float (above {sys.float_info.max:.1e}); "
                         "give a finite figure such as 989.4e12") from None
    return figure if math.isfinite(figure) and figure > 0 else None


DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16", "float8", "int8", "int4")
"""The dtype names a device's peaks are given for."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``; ``torch.half`` and ``"FP16"`` -> ``"float16"``; the float8 kinds -> ``"float8"``."""
    name = str(dtype).strip().removeprefix("torch.").lower()
    aliases = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
               "fp8": "float8", "qint8": "int8", "quint8": "int8"}
    name = aliases.get(name, name)
    return "float8" if name.startswith("float8") else name


# Dense (no 2:4 sparsity) peaks and memory bandwidth from the vendors' published figures. Where a
# datasheet quotes only "with sparsity" figures, the dense ones are half of them.
class _Table(Mapping):
    """A read-only mapping that copies and pickles (a ``MappingProxyType`` does neither)."""

    def __init__(self, items: Mapping[str, Device]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Device:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(self._items)


DEVICES: Mapping[str, Device] = _Table({
    # NVIDIA A100 Tensor Core GPU datasheet (2021), SXM4 80GB column
    "A100-SXM4-80GB": Device("A100-SXM4-80GB", {
        "float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12, "float16": 312e12, "int8": 624e12,
    }, bandwidth=2.039e12, memory=80e9),
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (Hopper), Table 2, H100 SXM5 dense figures
    "H100-SXM5": Device("H100-SXM5", {
        "float32": 66.9e12, "tf32": 494.7e12, "bfloat16": 989.4e12, "float16": 989.4e12,
        "float8": 1978.9e12, "int8": 1978.9e12,
    }, bandwidth=3.35e12, memory=80e9),
    # NVIDIA H200 Tensor Core GPU datasheet (2024), SXM: the H100's compute (sparse figures halved),
    # 4.8 TB/s of HBM3e
    "H200": Device("H200", {
        "float32": 66.9e12, "tf32": 494.7e12, "bfloat16": 989.4e12, "float16": 989.4e12,
        "float8": 1978.9e12, "int8": 1978.9e12,
    }, bandwidth=4.8e12, memory=141e9),
    # NVIDIA L4 Tensor Core GPU datasheet (2023): sparse figures halved; 300 GB/s GDDR6
    "L4": Device("L4", {
        "float32": 30.3e12, "tf32": 60e12, "bfloat16": 121e12, "float16": 121e12, "float8": 242.5e12,
        "int8": 242.5e12,
    }, bandwidth=300e9, memory=24e9),
    # NVIDIA Ada GPU Architecture whitepaper, Table 2 (GeForce RTX 4090): dense tensor figures with
    # FP32 accumulate (fp16 with fp16 accumulate is twice as fast); 1,008 GB/s GDDR6X
    "RTX-4090": Device("RTX-4090", {
        "float32": 82.6e12, "tf32": 82.6e12, "bfloat16": 165.2e12, "float16": 165.2e12, "float8": 330.3e12,
        "int8": 660.6e12,
    }, bandwidth=1.008e12, memory=24e9),
})
"""The built-in devices by name, read-only."""
_ALIASES = {"A100": "A100-SXM4-80GB", "H100": "H100-SXM5", "4090": "RTX-4090"}


def lookup_device(device: str | Device) -> Device:
    """``device`` as a :class:`Device`: one given, or a name from :data:`DEVICES` (case, spaces and
    dashes aside: ``"rtx 4090"``), or ``"A100"``, ``"H100"``, ``"4090"``."""
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a device name or a Device, not {type(device).__name__}")
    known = {_squeezed(name): name for name in DEVICES} | {_squeezed(alias): name for alias, name in _ALIASES.items()}
    name = known.get(_squeezed(device))
    if name is None:
        raise ValueError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)} "
                         "(or pass Device(name, flops={dtype: peak FLOP/s}, bandwidth=bytes/s))")
    return DEVICES[name]


def _squeezed(name: str) -> str:
    """``"RTX 4090"``, ``"rtx-4090"`` and ``"RTX_4090"`` alike."""
    return "".join(c for c in name.lower() if c.isalnum())


def estimate(flops: int, nbytes: int, peak: float, bandwidth: float) -> tuple[float, str]:
    """``(seconds, bound)`` of one call: the larger of ``flops / peak`` and ``nbytes / bandwidth``,
    and ``"compute"`` or ``"memory"`` by which it is (``""`` for a call that moved nothing)."""
    compute, memory = flops / peak, nbytes / bandwidth
    if not compute and not memory:
        return 0.0, ""
    return (compute, "compute") if compute >= memory else (memory, "memory")


_BACKWARD = "(backward)"


def call_times(records: Iterable[Record], backward: Iterable[Record] | None, peak: float,
               bandwidth: float) -> dict[tuple[str, str | None], list[float]]:
    """Each call's estimate, added up by where a table shows it: ``(layer, None)`` for the layer's
    own module calls and the copies it made, ``(layer, function)`` for a torch function it called,
    ``(layer, "(backward)")`` for its backward's operators. Each value is ``[seconds, seconds of
    compute-bound calls, seconds of memory-bound calls]``."""
    times: dict[tuple[str, str | None], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for kind, group in ((None, records), (_BACKWARD, backward or ())):
        for r in group:
            seconds, bound = estimate(r.flops, r.bytes_read + r.bytes_written, peak, bandwidth)
            if not seconds:
                continue
            key = (r.name, kind if kind is not None or r.function is None or r.status == "free" else r.function)
            entry = times[key]
            entry[0] += seconds
            entry[1 if bound == "compute" else 2] += seconds
    return times


def _bound(compute: float, memory: float) -> str:
    """The roof most of the time is spent against; ``""`` when no time is."""
    if not compute and not memory:
        return ""
    return "compute" if compute >= memory else "memory"


def estimated_tree(layer: Layer, times: Mapping[tuple[str, str | None], Sequence[float]]) -> Layer:
    """``layer``'s tree with ``roofline_time`` and ``bound`` filled in from :func:`call_times`: a
    layer's own time is its calls' (module calls and copies, each torch function it called, its
    backward's operators), its total adds its children's, and its bound is the roof its subtree's
    calls spend most of their time against."""
    return _estimated(layer, times)[0]


def _estimated(layer: Layer, times: Mapping[tuple[str, str | None], Sequence[float]]) -> tuple[Layer, float, float]:
    """The estimated layer, and its subtree's seconds in compute-bound and in memory-bound calls."""
    zero = (0.0, 0.0, 0.0)
    kids = [_estimated(k, times) for k in layer.children]
    functions = []
    for f in layer.functions:
        seconds, compute, memory = times.get((layer.name, f.function), zero)
        functions.append(replace(f, roofline_time=seconds, bound=_bound(compute, memory)))
    keys = [(layer.name, None), *((layer.name, f.function) for f in layer.functions), (layer.name, _BACKWARD)]
    own, own_compute, own_memory = (sum(part) for part in zip(*(times.get(key, zero) for key in keys)))
    compute = own_compute + sum(k[1] for k in kids)
    memory = own_memory + sum(k[2] for k in kids)
    estimated = replace(layer, children=tuple(k[0] for k in kids), functions=tuple(functions), own_roofline_time=own,
                        roofline_time=own + sum(k[0].roofline_time for k in kids), bound=_bound(compute, memory),
                        own_bound=_bound(own_compute, own_memory))
    return estimated, compute, memory


def resolved(device: str | Device, dtype: Any) -> tuple[Device, str, float]:
    """The device, the dtype's name and its peak FLOP/s."""
    device = lookup_device(device)
    name = dtype_name(dtype)
    return device, name, device.peak(name)
