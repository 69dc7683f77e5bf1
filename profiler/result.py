"""The object ``profile()`` returns: thop's tuple, carrying the whole report."""

from __future__ import annotations

import json
from html import escape as html_escape
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from profiler.export import layer_records, to_csv_text, to_dict
from profiler.html import html_table
from profiler.render import (
    DEFAULT_COLUMNS, ROOFLINE_COLUMNS, TIME_COLUMNS, TRAINING_ROOFLINE_COLUMNS, TableOptions, find, text_table,
)
from profiler.roofline import Device, call_times, estimated_tree, resolved
from hooks import ModuleInfo, Record
from profiler.tree import Layer, Uncounted, build_tree, layer_info, sum_counts, walk
from profiler.units import format_count, format_rate, format_seconds

__all__ = ["ProfileResult", "RooflineResult"]


class ProfileResult(tuple):
    """Unpacks like thop's result: ``macs, params = profile(...)``, or ``macs, params,
    layer_info`` with ``ret_layer_info=True``; also carries the layer tree and renders it.

    The tree is built on first use, so the one-line ``macs, params = profile(...)`` pays only for
    the counting pass.
    """

    uncounted: tuple[Uncounted, ...]
    dtype: torch.dtype | None
    """The dtype the forward computes in (its parameters', else its inputs'): what :meth:`roofline`
    takes the peak FLOP/s for."""
    timed_on: str | None
    """``"cuda"`` or ``"cpu"``: where ``measure_time=True`` timed the layers; None when untimed."""

    def __new__(
        cls,
        modules: Sequence[ModuleInfo],
        records: Sequence[Record],
        times: Mapping[str, float] | None = None,
        uncounted: Sequence[Uncounted] = (),
        ret_layer_info: bool = False,
        *,
        backward: Sequence[Record] | None = None,
        activations: Mapping[str, int] | None = None,
        dtype: torch.dtype | None = None,
        timed_on: str | None = None,
    ):
        parts = (tuple(modules), tuple(records), times, backward, activations)
        totals = sum_counts(parts[1])
        values = (totals.macs, sum(info.params for info in parts[0]))
        root = build_tree(*parts) if ret_layer_info else None
        self = super().__new__(cls, values + ((layer_info(root),) if root else ()))
        self._parts = parts
        self._totals = totals
        self.uncounted = tuple(uncounted)
        self.dtype = dtype
        self.timed_on = timed_on
        if root is not None:
            self.__dict__["root"] = root  # cached_property's slot: built once
        return self

    @cached_property
    def root(self) -> Layer:
        """The layer tree: the model, its children, theirs..."""
        return build_tree(*self._parts)

    @property
    def total_macs(self) -> int:
        return self._totals.macs

    @property
    def total_flops(self) -> int:
        return self._totals.flops

    @property
    def matmul_flops(self) -> int:
        """FLOPs of matmul-like work only (linear, conv, matmul, attention): FlopCounterMode's count."""
        return self._totals.matmul_flops

    @property
    def bytes_read(self) -> int:
        """Bytes the forward's calls read: inputs, parameters and buffers (unfused traffic, :mod:`hooks.traffic`)."""
        return self.root.bytes_read

    @property
    def bytes_written(self) -> int:
        """Bytes of the forward's calls' outputs."""
        return self.root.bytes_written

    @property
    def total_bytes(self) -> int:
        """Bytes read and written by the forward's calls, each call on its own (nothing fused)."""
        return self.root.bytes

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs per byte moved (:attr:`total_flops` / :attr:`total_bytes`); None when nothing moved."""
        return self.root.intensity

    @property
    def total_params(self) -> int:
        return self[1]

    @property
    def total_time(self) -> float | None:
        """Seconds of the median timed forward (``measure_time=True``), else None."""
        return self.root.time

    @property
    def layers(self) -> list[Layer]:
        """Every layer in tree order."""
        return list(walk(self.root))

    def layer(self, name: str) -> Layer:
        """The layer named ``name`` (as in ``named_modules()``; ``""`` is the model)."""
        return find(self.root, name)

    _default_columns = DEFAULT_COLUMNS

    def _options(self, depth, columns, sort_by, top, units, layer) -> TableOptions:
        if columns is None:
            columns = self._default_columns + (TIME_COLUMNS if self.root.time is not None else ())
        elif isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        options = TableOptions(depth, tuple(columns), sort_by, top, units, layer)
        options.validate_for(self.root)
        return options

    def roofline(self, device: str | Device, dtype: str | torch.dtype | None = None) -> RooflineResult:
        """The time each layer would take on ``device`` (a name in :data:`profiler.DEVICES`, or a
        :class:`Device`), by the roofline model: per call, the larger of FLOPs / the peak FLOP/s
        for ``dtype`` (default: the model's parameters' dtype) and bytes / the memory bandwidth.
        A training profile's backward counts too. Raises ValueError for an unknown device or a
        dtype it has no figure for."""
        return RooflineResult(self, device, dtype)

    def table(
        self,
        depth: int | None = None,
        *,
        columns: Sequence[str] | None = None,
        sort_by: str | None = None,
        top: int | None = None,
        units: str = "human",
        tablefmt: str = "simple",
        layer: str | None = None,
    ) -> str:
        """The per-layer table as text.

        ``depth=None`` picks the deepest level that fits 40 rows of at most 100 characters.
        ``columns`` is a sequence of column names or one comma-separated string. ``sort_by``
        ("macs", "flops", "params", "time") ranks every layer by its own work in a flat list,
        ``top`` keeps the first k rows. ``units`` is "human" (1.23M) or "exact" (1,234,567);
        ``tablefmt`` is any tabulate format (names are escaped for it). ``layer="model.layers.0"``
        shows that layer's subtree only: ``depth`` then counts levels below it, and the Total row
        and the percentages are of that layer. Torch functions are shown as users write them
        (``F.linear``, ``Tensor.add``); the records keep their full names.
        """
        options = self._options(depth, columns, sort_by, top, units, layer)
        return text_table(self.root, self.uncounted, options, tablefmt)

    def html(
        self,
        depth: int | None = None,
        *,
        columns: Sequence[str] | None = None,
        sort_by: str | None = None,
        top: int | None = None,
        units: str = "human",
        layer: str | None = None,
    ) -> str:
        """The per-layer table as HTML, with the options of :meth:`table`."""
        return html_table(self.root, self.uncounted, self._options(depth, columns, sort_by, top, units, layer))

    def _repr_html_(self) -> str:
        return self.html()

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable plain Python: totals, one entry per layer, uncounted."""
        return to_dict(self.root, self.uncounted)

    def to_json(self, path: str | Path | None = None) -> str:
        """:meth:`to_dict` as JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per layer as CSV; also written to ``path`` when given."""
        text = to_csv_text(self.root)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self, depth: int | None = None, **options: Any) -> str:
        """The table as GitHub-flavoured markdown."""
        return self.table(depth, tablefmt="github", **options)

    def to_dataframe(self):
        """One row per layer as a pandas DataFrame (pandas is needed for this call only)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from exc
        return pd.DataFrame(layer_records(self.root))

    def __repr__(self) -> str:
        text = (
            f"ProfileResult(macs={format_count(self.total_macs, 'exact')}, "
            f"flops={format_count(self.total_flops, 'exact')}, "
            f"params={format_count(self.total_params, 'exact')}"
        )
        if self._parts[2] is not None:
            text += f", time={format_seconds(self.root.time)}"
        if self.uncounted:
            text += f", uncounted={sum(u.calls for u in self.uncounted)} calls"
        return text + ")"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(repr(self))


class RooflineResult(ProfileResult):
    """A result's layers with estimated times on a device (:meth:`ProfileResult.roofline`): it
    unpacks, tabulates and exports as the result it came from, with ``roofline_time`` and ``bound``
    on every layer and columns of those names in its tables (a timed result's measured ``time``
    right after ``roofline_time``). A training profile's estimates include its backward (its tables
    add ``bwd_flops``; the ``bytes`` column is the forward's, the backward's are ``backward_bytes``
    in the exports)."""

    device: Device
    peak_dtype: str
    """The dtype whose peak the estimates use: ``dtype``'s name, or the one asked for (``"tf32"``)."""
    peak: float
    """The device's peak FLOP/s for :attr:`peak_dtype`."""
    source: ProfileResult
    """The result estimated."""

    _default_columns = ROOFLINE_COLUMNS

    def __new__(cls, result: ProfileResult, device: str | Device, dtype: str | torch.dtype | None = None):
        device, name, peak = resolved(device, dtype if dtype is not None else result.dtype or torch.float32)
        self = tuple.__new__(cls, tuple(result))
        self._parts, self._totals, self.uncounted = result._parts, result._totals, result.uncounted
        self.dtype, self.timed_on = result.dtype, result.timed_on
        self.device, self.peak_dtype, self.peak = device, name, peak
        self.source = result
        times = call_times(result._parts[1], result._parts[3], peak, device.bandwidth)
        self.__dict__["root"] = estimated_tree(result.root, times)
        if self.root.backward is not None:
            self._default_columns = TRAINING_ROOFLINE_COLUMNS
        return self

    def _options(self, depth, columns, sort_by, top, units, layer) -> TableOptions:
        if columns is None:  # a GPU run's measured time next to the estimate; a CPU's is no match for it
            columns = self._default_columns
            if self.timed_on == "cuda":
                at = columns.index("roofline_time") + 1
                columns = (*columns[:at], "time", *columns[at:])
        return super()._options(depth, columns, sort_by, top, units, layer)

    def note(self) -> str:
        """One line under its tables: the device and the figures the estimates used."""
        return (f"Est. time on {self.device.name}: {self.peak_dtype} at {format_rate(self.peak)} FLOP/s, "
                f"{format_rate(self.device.bandwidth)} B/s; per call, max(FLOPs/peak, bytes/BW).")

    def table(self, depth: int | None = None, **options: Any) -> str:
        """:meth:`ProfileResult.table`, with :meth:`note` under it."""
        return super().table(depth, **options) + "\n" + self.note()

    def html(self, depth: int | None = None, **options: Any) -> str:
        """:meth:`ProfileResult.html`, with :meth:`note` under it."""
        return super().html(depth, **options) + f"<p>{html_escape(self.note())}</p>"

    @property
    def time(self) -> float:
        """Estimated seconds of the whole model: the sum of its calls' estimates."""
        return self.root.roofline_time

    @property
    def bound(self) -> str:
        """``"compute"`` or ``"memory"``: the roof the model's calls spend most of their time against."""
        return self.root.bound

    def device_dict(self) -> dict[str, Any]:
        """The device and the figures the estimates used."""
        return {"device": self.device.name, "dtype": self.peak_dtype, "peak_flops": self.peak,
                "bandwidth": self.device.bandwidth}

    def to_dict(self) -> dict[str, Any]:
        """:meth:`ProfileResult.to_dict` with ``roofline_time`` and ``bound`` per layer and in the
        totals, and a ``roofline`` entry naming the device and its figures."""
        return {**super().to_dict(), "roofline": self.device_dict()}

    def __repr__(self) -> str:
        return (f"RooflineResult(device={self.device.name!r}, dtype={self.peak_dtype}, time={format_seconds(self.time)}, "
                f"flops={format_count(self.total_flops, 'exact')}, bytes={format_count(self.total_bytes, 'exact')}, "
                f"bound={self.bound!r})")
