"""Rendering: the layer tree as rows, then as a tabulate table. Pure functions of the tree."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tabulate import tabulate

from hooks import Counts, Shape
from profiler.tree import FunctionStat, Layer, Uncounted
from profiler.units import UNITS, format_count

__all__ = ["COLUMNS", "DEFAULT_COLUMNS", "Row", "rows", "auto_depth", "text_table", "uncounted_note"]

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
}
DEFAULT_COLUMNS = ("layer", "type", "output_shape", "params", "macs", "flops", "macs_pct")
_NUMERIC = {"calls", "params", "params_pct", "macs", "flops", "macs_pct"}
_TOTALS = {"layer", "params", "params_pct", "macs", "flops", "macs_pct"}
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


def _layer_row(layer: Layer, prefix: str) -> Row:
    label = layer.name.rpartition(".")[2] if layer.name else layer.type
    return Row(prefix, label, layer.type, layer.depth, layer.calls, layer.status,
               layer.input_shapes, layer.output_shapes, layer.params, layer.total, layer.uncounted)


def _function_row(stat: FunctionStat, depth: int, prefix: str) -> Row:
    return Row(prefix, stat.function.rpartition(".")[2] + "()", stat.function, depth, stat.calls,
               stat.status, (), (), None, stat.counts, stat.status == "uncounted")


def rows(root: Layer, depth: int | None = None) -> Iterator[Row]:
    """Rows in tree order down to ``depth`` (None: all). A layer that has children shows the
    torch functions it called itself as rows of their own, so each parent row is the sum of the
    rows under it."""

    def visit(layer: Layer, lead: str, glyph: str) -> Iterator[Row]:
        yield _layer_row(layer, lead + glyph)
        if depth is not None and layer.depth >= depth:
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


def auto_depth(root: Layer, max_rows: int = MAX_AUTO_ROWS) -> int:
    """The deepest depth whose table fits in ``max_rows`` rows (at least 1)."""
    deepest = max(row.depth for row in rows(root))
    for depth in range(deepest, 0, -1):
        if sum(1 for _ in rows(root, depth)) <= max_rows:
            return depth
    return 1


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _count(row: Row, value: int, units: str) -> str:
    """A count, or "uncounted" when none of the row's work has a rule; "+?" marks a lower bound."""
    if row.uncounted and row.counts == Counts():
        return "uncounted"
    return format_count(value, units) + (" +?" if row.uncounted else "")


def _cell(row: Row, column: str, root: Layer, units: str) -> str:
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
    raise ValueError(f"unknown column {column!r}; valid columns: {', '.join(COLUMNS)}")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def validate(columns: Sequence[str], units: str) -> None:
    """Raise ``ValueError`` naming the bad option and listing the valid ones."""
    bad = [c for c in columns if c not in COLUMNS]
    if bad:
        raise ValueError(f"unknown column(s) {', '.join(map(repr, bad))}; valid columns: {', '.join(COLUMNS)}")
    if units not in UNITS:
        raise ValueError(f"unknown units {units!r}; valid units: {', '.join(UNITS)}")


def text_table(
    root: Layer,
    uncounted: Sequence[Uncounted] = (),
    *,
    depth: int | None = None,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    units: str = "human",
    tablefmt: str = "simple",
) -> str:
    """The layer table as text (any tabulate ``tablefmt``), with a totals row and the uncounted list."""
    validate(columns, units)
    if depth is None:
        depth = auto_depth(root)
    body = [[_cell(row, c, root, units) for c in columns] for row in rows(root, depth)]
    total = Row("", "Total", "", 0, 0, "counted", (), (), root.params, root.total, root.uncounted)
    body.append([_cell(total, c, root, units) if c in _TOTALS else "" for c in columns])
    colalign = ["right" if c in _NUMERIC else "left" for c in columns]
    text = tabulate(body, headers=[COLUMNS[c] for c in columns], tablefmt=tablefmt,
                    colalign=colalign, disable_numparse=True, preserve_whitespace=True)
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
