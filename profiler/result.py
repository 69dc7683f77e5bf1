"""The object ``profile()`` returns: thop's tuple, carrying the whole report."""

from __future__ import annotations

from collections.abc import Sequence

from profiler.render import DEFAULT_COLUMNS, text_table, uncounted_note
from profiler.tree import Layer, Uncounted, layer_info, walk
from profiler.units import format_count

__all__ = ["ProfileResult"]


class ProfileResult(tuple):
    """Unpacks like thop's result: ``macs, params = profile(...)``, or ``macs, params,
    layer_info`` with ``ret_layer_info=True``; also carries the layer tree and renders it."""

    root: Layer
    uncounted: tuple[Uncounted, ...]

    def __new__(cls, root: Layer, uncounted: Sequence[Uncounted] = (), ret_layer_info: bool = False):
        values = (root.total.macs, root.params) + ((layer_info(root),) if ret_layer_info else ())
        self = super().__new__(cls, values)
        self.root = root
        self.uncounted = tuple(uncounted)
        return self

    @property
    def total_macs(self) -> int:
        return self.root.total.macs

    @property
    def total_flops(self) -> int:
        return self.root.total.flops

    @property
    def matmul_flops(self) -> int:
        """FLOPs of matmul-like work only (linear, conv, matmul, attention): FlopCounterMode's count."""
        return self.root.total.matmul_flops

    @property
    def total_params(self) -> int:
        return self.root.params

    @property
    def layers(self) -> list[Layer]:
        """Every layer in tree order."""
        return list(walk(self.root))

    def layer(self, name: str) -> Layer:
        """The layer named ``name`` (as in ``named_modules()``; ``""`` is the model)."""
        for layer in walk(self.root):
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in the profiled tree")

    def table(
        self,
        depth: int | None = None,
        *,
        columns: Sequence[str] = DEFAULT_COLUMNS,
        units: str = "human",
        tablefmt: str = "simple",
    ) -> str:
        """The per-layer table as text; ``depth=None`` picks the deepest depth that fits 40 rows."""
        return text_table(self.root, self.uncounted, depth=depth, columns=columns, units=units, tablefmt=tablefmt)

    def __repr__(self) -> str:
        text = (
            f"ProfileResult(macs={format_count(self.total_macs, 'exact')}, "
            f"flops={format_count(self.total_flops, 'exact')}, "
            f"params={format_count(self.total_params, 'exact')}"
        )
        if self.uncounted:
            text += f", uncounted={sum(u.calls for u in self.uncounted)} calls"
        return text + ")"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(repr(self))

    def summary(self) -> str:
        """Totals in one line each, with the uncounted list."""
        lines = [
            f"MACs:   {format_count(self.total_macs, 'exact')}",
            f"FLOPs:  {format_count(self.total_flops, 'exact')}",
            f"Params: {format_count(self.total_params, 'exact')}",
        ]
        note = uncounted_note(self.uncounted)
        return "\n".join(lines + ([note] if note else []))
