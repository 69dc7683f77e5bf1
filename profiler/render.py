"""Rendering: the layer tree as rows, rows as cells, cells as a tabulate table. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tabulate import tabulate

from hooks import Counts, Shape
from profiler.tree import FunctionStat, Layer, Uncounted, walk
from profiler.units import UNITS, format_count, format_rate, format_seconds

__all__ = [
    "COLUMNS",
    "DEFAULT_COLUMNS",
    "SORT_KEYS",
    "Row",
    "TableOptions",
    "auto_depth",
    "cells",
    "headers",
    "rows",
    "find",
    "select_rows",
    "text_table",
    "total_row",
    "uncounted_note",
]

COLUMNS = {
    "layer": "Layer",
    "type": "Type",
    "input_shape": "Input shape",
    "output_shape": "Output shape",
    "calls": "Calls",
    "params": "Params",
    "params_pct": "Params %",
    "macs": "MACs",
    "flops": "FLOPs",
    "macs_pct": "MACs %",
    "time": "Time",
    "flops_per_s": "FLOP/s",
}
DEFAULT_COLUMNS = ("layer", "type", "output_shape", "params", "macs", "flops", "macs_pct")
TIME_COLUMNS = ("time", "flops_per_s")
SORT_KEYS = ("macs", "flops", "params", "time")
NUMERIC = {"calls", "params", "params_pct", "macs", "flops", "macs_pct", "time", "flops_per_s"}
_TOTALS = {"layer", "params", "params_pct", "macs", "flops", "macs_pct", "time", "flops_per_s"}
MAX_AUTO_ROWS = 40


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a table: a layer, or a group of torch function calls a layer made itself."""

    prefix: str  # tree glyphs
    label: str
    type: str
    depth: int
    calls: int
    status: str
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    params: int | None
    counts: Counts
    uncounted: bool = False  # some work in this row ran without a rule
    time: float | None = None  # seconds


@dataclass(frozen=True, slots=True)
class TableOptions:
    """What a table shows; checked up front so a bad value fails before any rendering."""

    depth: int | None = None
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    sort_by: str | None = None
    top: int | None = None
    units: str = "human"
    layer: str | None = None  # show only this layer's subtree

    def validate(self, timed: bool) -> None:
        """Raise ``ValueError`` naming the bad option and listing the valid ones."""
        bad = [c for c in self.columns if c not in COLUMNS]
        if bad:
            raise ValueError(f"unknown column(s) {', '.join(map(repr, bad))}; valid columns: {', '.join(COLUMNS)}")
        if self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; valid units: {', '.join(UNITS)}")
        if self.sort_by is not None and self.sort_by not in SORT_KEYS:
            raise ValueError(f"unknown sort key {self.sort_by!r}; valid keys: {', '.join(SORT_KEYS)}")
        if self.top is not None and (isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 1):
            raise ValueError(f"top must be a positive integer, not {self.top!r}")
        if self.depth is not None and (isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0):
            raise ValueError(f"depth must be None or an integer >= 0, not {self.depth!r}")
        needs_time = [c for c in self.columns if c in TIME_COLUMNS] + (["sort_by='time'"] if self.sort_by == "time" else [])
        if needs_time and not timed:
            raise ValueError(f"{', '.join(needs_time)} needs timings: profile(..., measure_time=True)")


def _layer_row(layer: Layer, prefix: str) -> Row:
    label = layer.name.rpartition(".")[2] if layer.name else layer.type
    return Row(prefix, label, layer.type, layer.depth, layer.calls, layer.status, layer.input_shapes,
               layer.output_shapes, layer.params, layer.total, layer.uncounted, layer.time)


def _function_row(stat: FunctionStat, depth: int, prefix: str) -> Row:
    return Row(prefix, stat.function.rpartition(".")[2] + "()", stat.function, depth, stat.calls,
               stat.status, (), (), None, stat.counts, stat.status == "uncounted")


def rows(root: Layer, depth: int | None = None) -> Iterator[Row]:
    """Tree rows down to ``depth`` levels below ``root`` (None: all). A layer that has children
    shows the torch functions it called itself as rows of their own, so each parent row is the
    sum of the rows under it."""

    def visit(layer: Layer, lead: str, glyph: str) -> Iterator[Row]:
        yield _layer_row(layer, lead + glyph)
        if depth is not None and layer.depth - root.depth >= depth:
            return
        functions = layer.functions if layer.children else ()
        entries = [("function", f) for f in functions] + [("layer", c) for c in layer.children]
        child_lead = lead + ("" if not glyph else "│  " if glyph == "├─ " else "   ")
        for i, (kind, entry) in enumerate(entries):
            child_glyph = "└─ " if i == len(entries) - 1 else "├─ "
            if kind == "function":
                yield _function_row(entry, layer.depth + 1, child_lead + child_glyph)
            else:
                yield from visit(entry, child_lead, child_glyph)

    yield from visit(root, "", "")


def _own_row(layer: Layer) -> Row:
    """A layer's own work (its rule, or the functions it called itself), not its children's."""
    uncounted = layer.status == "uncounted" or any(f.status == "uncounted" for f in layer.functions)
    return Row("", layer.name or layer.type, layer.type, layer.depth, layer.calls, layer.status,
               layer.input_shapes, layer.output_shapes, layer.own_params, layer.own, uncounted, layer.own_time)


_SORT_VALUE = {
    "macs": lambda r: r.counts.macs,
    "flops": lambda r: r.counts.flops,
    "params": lambda r: r.params or 0,
    "time": lambda r: r.time or 0.0,
}


def find(root: Layer, name: str) -> Layer:
    """The layer named ``name`` (as in ``named_modules()``), or ``KeyError``."""
    for layer in walk(root):
        if layer.name == name:
            return layer
    raise KeyError(f"no layer named {name!r}; names are those of named_modules(), e.g. "
                   f"{', '.join(repr(c.name) for c in root.children[:3])}")


def select_rows(root: Layer, options: TableOptions) -> list[Row]:
    """The tree (``sort_by=None``), or a flat ranking of every layer by its own work; only the
    subtree of ``options.layer`` when given, ``options.depth`` levels deep."""
    if options.layer is not None:
        try:
            root = find(root, options.layer)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    if options.sort_by is None:
        depth = auto_depth(root) if options.depth is None else options.depth
        selected = list(rows(root, depth))
    else:
        flat = [_own_row(layer) for layer in walk(root)
                if options.depth is None or layer.depth - root.depth <= options.depth]
        selected = sorted(flat, key=_SORT_VALUE[options.sort_by], reverse=True)
    return selected[: options.top] if options.top else selected


def auto_depth(root: Layer, max_rows: int = MAX_AUTO_ROWS) -> int:
    """The most levels below ``root`` whose table fits in ``max_rows`` rows (at least 1)."""
    deepest = max(row.depth for row in rows(root)) - root.depth
    for depth in range(deepest, 0, -1):
        if sum(1 for _ in rows(root, depth)) <= max_rows:
            return depth
    return 1


def headers(options: TableOptions) -> list[str]:
    """Column titles; a flat ranking counts each layer's own work, marked "(self)"."""
    own = options.sort_by is not None
    return [COLUMNS[c] + (" (self)" if own and c in NUMERIC - {"calls"} else "") for c in options.columns]


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _count(row: Row, value: int, units: str) -> str:
    """A count, or "uncounted" when none of the row's work has a rule; "+?" marks a lower bound."""
    if row.uncounted and row.counts == Counts():
        return "uncounted"
    return format_count(value, units) + (" +?" if row.uncounted else "")


def cell(row: Row, column: str, root: Layer, units: str) -> str:
    """One cell as text."""
    if column == "layer":
        return row.prefix + row.label + (f" ×{row.calls}" if row.calls > 1 else "")
    if column == "type":
        return row.type
    if column == "input_shape":
        return _shapes(row.input_shapes)
    if column == "output_shape":
        return "not run" if row.status == "not run" else _shapes(row.output_shapes)
    if column == "calls":
        return str(row.calls)
    if column == "params":
        return "" if row.params is None else format_count(row.params, units)
    if column == "params_pct":
        return "" if row.params is None else _percent(row.params, root.params)
    if column in ("macs", "flops"):
        return _count(row, getattr(row.counts, column), units)
    if column == "macs_pct":
        return _percent(row.counts.macs, root.total.macs)
    if column == "time":
        return "" if row.time is None else format_seconds(row.time)
    if column == "flops_per_s":
        return "" if not row.time or row.uncounted else format_rate(row.counts.flops / row.time)
    raise ValueError(f"unknown column {column!r}; valid columns: {', '.join(COLUMNS)}")


def cells(row: Row, columns: Sequence[str], root: Layer, units: str) -> list[str]:
    return [cell(row, c, root, units) for c in columns]


def total_row(root: Layer) -> Row:
    return Row("", "Total", "", 0, 0, "counted", (), (), root.params, root.total, root.uncounted, root.time)


def text_table(root: Layer, uncounted: Sequence[Uncounted], options: TableOptions, tablefmt: str = "simple") -> str:
    """The table as text (any tabulate ``tablefmt``), with a totals row and the uncounted list."""
    options.validate(timed=root.time is not None)
    columns = options.columns
    body = [cells(row, columns, root, options.units) for row in select_rows(root, options)]
    total = total_row(root)
    body.append([cell(total, c, root, options.units) if c in _TOTALS else "" for c in columns])
    colalign = ["right" if c in NUMERIC else "left" for c in columns]
    text = tabulate(body, headers=headers(options), tablefmt=tablefmt, colalign=colalign,
                    disable_numparse=True, preserve_whitespace=True)
    note = uncounted_note(uncounted)
    return f"{text}\n{note}" if note else text


def uncounted_note(uncounted: Sequence[Uncounted]) -> str:
    """One line per uncounted module type or function: its work is missing from the totals."""
    if not uncounted:
        return ""
    lines = ["Uncounted (no rule; their work is not in the totals):"]
    for u in uncounted:
        shown = [f"'{name}'" if name else "the model" for name in u.layers[:3]]
        where = ", ".join(shown) + (", ..." if len(u.layers) > 3 else "")
        lines.append(f"  {u.kind} {u.name} ×{u.calls} in {where}")
    return "\n".join(lines)
