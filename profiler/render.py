"""Rendering: the layer tree as rows, rows as cells, cells as a tabulate table. Pure functions.

Display choices live here, not in the records: torch function names are shortened the way users
write them (``F.linear``, ``Tensor.add``), control characters in names are shown as escapes, and
characters a table format gives a meaning to (``|`` in markdown, ``<`` in HTML) are escaped.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from html import escape as html_escape

from tabulate import LATEX_ESCAPE_RULES, tabulate

from hooks import Counts, Shape
from profiler.tree import FunctionStat, Layer, Uncounted, walk
from profiler.units import UNITS, format_bytes, format_count, format_rate, format_seconds

__all__ = [
    "COLUMNS",
    "DEFAULT_COLUMNS",
    "MAX_WIDTH",
    "SORT_KEYS",
    "ROOFLINE_COLUMNS",
    "TRAINING_ROOFLINE_COLUMNS",
    "TRAINING_COLUMNS",
    "Row",
    "TableOptions",
    "auto_depth",
    "auto_depths",
    "cells",
    "display_name",
    "headers",
    "notes",
    "printable",
    "resolve_depth",
    "rows",
    "find",
    "format_notes",
    "scope",
    "select_rows",
    "tabulate_text",
    "text_table",
    "total_cells",
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
    "bwd_flops": "Bwd FLOPs",
    "act_bytes": "Act. bytes",
    "bytes": "Bytes",
    "intensity": "FLOP/B",
    "roofline_time": "Est. time",
    "bound": "Bound",
}
DEFAULT_COLUMNS = ("layer", "type", "output_shape", "params", "macs", "flops", "macs_pct")
TRAINING_COLUMNS = ("layer", "type", "params", "flops", "bwd_flops", "act_bytes")
"""The default columns of a training profile (``profile_training``)."""
TIME_COLUMNS = ("time", "flops_per_s")
ROOFLINE_COLUMNS = ("layer", "type", "flops", "bytes", "intensity", "roofline_time", "bound")
"""The default columns of a roofline estimate (``result.roofline(device)``)."""
TRAINING_ROOFLINE_COLUMNS = ("layer", "type", "flops", "bwd_flops", "bytes", "roofline_time", "bound")
"""The default columns of a training profile's roofline: its estimates include the backward."""
_NEEDS_ROOFLINE = ("roofline_time", "bound")
_NEEDS_TRAINING = ("bwd_flops", "act_bytes")
SORT_KEYS = ("macs", "flops", "params", "time", "bwd_flops", "act_bytes", "bytes", "roofline_time")
NUMERIC = {"calls", "params", "params_pct", "macs", "flops", "macs_pct", "time", "flops_per_s", "bwd_flops", "act_bytes",
           "bytes", "intensity", "roofline_time"}
_TOTALS = {"layer", "params", "params_pct", "macs", "flops", "macs_pct", "time", "flops_per_s", "bwd_flops", "act_bytes",
           "bytes", "intensity", "roofline_time", "bound"}
MAX_AUTO_ROWS = 40
MAX_WIDTH = 100
"""Characters per line that a table with the default depth, and every note, fits in."""
_SEPARATOR = 2  # spaces between columns in the "simple" format
_HEADER_PADDING = 2  # tabulate's MIN_PADDING: a column is at least its header plus 2 wide


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
    backward: Counts | None = None  # a training profile's backward work
    backward_uncounted: bool = False
    activation_bytes: int | None = None
    bytes: int = 0  # read and written (unfused traffic)
    roofline_time: float | None = None  # estimated seconds on a device
    bound: str = ""


@dataclass(frozen=True, slots=True)
class TableOptions:
    """What a table shows; checked up front so a bad value fails before any rendering."""

    depth: int | None = None
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    sort_by: str | None = None
    top: int | None = None
    units: str = "human"
    layer: str | None = None  # show only this layer's subtree

    def validate_for(self, root: Layer) -> None:
        """:meth:`validate` against what ``root``'s profile has: timings, a backward, estimates."""
        self.validate(timed=root.time is not None, training=root.backward is not None,
                      roofline=root.roofline_time is not None)

    def validate(self, timed: bool, training: bool = False, roofline: bool = False) -> None:
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
        needs_training = [c for c in (*self.columns, self.sort_by) if c in _NEEDS_TRAINING]
        if needs_training and not training:
            raise ValueError(f"{', '.join(needs_training)} needs a training profile: profile_training(model, ...)")
        needs_roofline = [c for c in (*self.columns, self.sort_by) if c in _NEEDS_ROOFLINE]
        if needs_roofline and not roofline:
            raise ValueError(f"{', '.join(needs_roofline)} needs a device: result.roofline('H100-SXM5').table()")


# ---------------------------------------------------------------- names for display

_SHORT_PREFIXES = (("torch.nn.functional.", "F."), ("torch.Tensor.", "Tensor."))


def display_name(name: str) -> str:
    """A torch function as users write it (``F.scaled_dot_product_attention``, ``Tensor.add``,
    ``torch.matmul``); aten operators and module types are left as they are."""
    for prefix, short in _SHORT_PREFIXES:
        if name.startswith(prefix):
            return short + name[len(prefix):]
    return name


def printable(text: str) -> str:
    """``text`` on one line: newlines, tabs, escape codes and other unprintable characters are
    shown as their escapes (``\\n``), so a name can neither add a row nor hide itself."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# ---------------------------------------------------------------- rows


def _layer_row(layer: Layer, prefix: str, label: str | None = None) -> Row:
    if label is None:
        label = layer.name.rpartition(".")[2] if layer.name else layer.type
    return Row(prefix, label, layer.type, layer.depth, layer.calls, layer.status, layer.input_shapes,
               layer.output_shapes, layer.params, layer.total, layer.uncounted, layer.time,
               layer.backward, layer.backward_uncounted_calls > 0, layer.activation_bytes, layer.bytes,
               layer.roofline_time, layer.bound)


def _function_row(stat: FunctionStat, depth: int, prefix: str) -> Row:
    return Row(prefix, stat.function.rpartition(".")[2] + "()", stat.function, depth, stat.calls,
               stat.status, (), (), None, stat.counts, stat.status == "uncounted", bytes=stat.bytes,
               roofline_time=stat.roofline_time, bound=stat.bound)


def _has_own_training_work(layer: Layer) -> bool:
    return layer.own_backward is not None and bool(
        layer.own_backward.flops or layer.own_activation_bytes or any(f.status == "uncounted" for f in layer.backward_functions))


def _backward_row(layer: Layer, prefix: str) -> Row:
    """In a training table, what a layer's own torch calls cost in the backward and saved for it
    (its function rows show their forward), so a parent's row is still the sum of the rows under it."""
    uncounted = any(f.status == "uncounted" for f in layer.backward_functions)
    return Row(prefix, "(backward)", "", layer.depth + 1, 0, "backward", (), (), None, Counts(), False, None,
               layer.own_backward, uncounted, layer.own_activation_bytes)


def rows(root: Layer, depth: int | None = None) -> Iterator[Row]:
    """Tree rows down to ``depth`` levels below ``root`` (None: all). A layer that has children
    shows the torch functions it called itself as rows of their own (and, in a training profile,
    a ``(backward)`` row for their backward and saved tensors), so each parent row is the sum of
    the rows under it. ``root`` is labelled with its full name (the model with its type)."""

    def visit(layer: Layer, lead: str, glyph: str, label: str | None = None) -> Iterator[Row]:
        yield _layer_row(layer, lead + glyph, label)
        if depth is not None and layer.depth - root.depth >= depth:
            return
        functions = layer.functions if layer.children else ()
        entries = [("function", f) for f in functions] + [("layer", c) for c in layer.children]
        if layer.children and _has_own_training_work(layer):
            entries.insert(len(functions), ("backward", layer))
        child_lead = lead + ("" if not glyph else "│  " if glyph == "├─ " else "   ")
        for i, (kind, entry) in enumerate(entries):
            child_glyph = "└─ " if i == len(entries) - 1 else "├─ "
            if kind == "function":
                yield _function_row(entry, layer.depth + 1, child_lead + child_glyph)
            elif kind == "backward":
                yield _backward_row(entry, child_lead + child_glyph)
            else:
                yield from visit(entry, child_lead, child_glyph)

    yield from visit(root, "", "", root.name or root.type)


def _own_row(layer: Layer) -> Row:
    """A layer's own work (its rule, or the functions it called itself), not its children's."""
    uncounted = layer.status == "uncounted" or any(f.status == "uncounted" for f in layer.functions)
    backward_uncounted = any(f.status == "uncounted" for f in layer.backward_functions)
    return Row("", layer.name or layer.type, layer.type, layer.depth, layer.calls, layer.status,
               layer.input_shapes, layer.output_shapes, layer.own_params, layer.own, uncounted, layer.own_time,
               layer.own_backward, backward_uncounted, layer.own_activation_bytes, layer.own_bytes,
               layer.own_roofline_time, layer.own_bound)


_SORT_VALUE = {
    "macs": lambda r: r.counts.macs,
    "flops": lambda r: r.counts.flops,
    "params": lambda r: r.params or 0,
    "time": lambda r: r.time or 0.0,
    "bwd_flops": lambda r: r.backward.flops if r.backward else 0,
    "act_bytes": lambda r: r.activation_bytes or 0,
    "bytes": lambda r: r.bytes,
    "roofline_time": lambda r: r.roofline_time or 0.0,
}


def find(root: Layer, name: str) -> Layer:
    """The layer named ``name`` (as in ``named_modules()``), or ``KeyError``."""
    for layer in walk(root):
        if layer.name == name:
            return layer
    raise KeyError(f"no layer named {name!r}; names are those of named_modules(), e.g. "
                   f"{', '.join(repr(c.name) for c in root.children[:3])}")


def scope(root: Layer, options: TableOptions) -> Layer:
    """The layer a table covers: ``options.layer``'s subtree, or the whole model. Its totals are
    the table's Total row and the whole of its percentages."""
    if options.layer is None:
        return root
    try:
        return find(root, options.layer)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def select_rows(root: Layer, options: TableOptions) -> list[Row]:
    """The tree (``sort_by=None``), or a flat ranking of every layer by its own work; only the
    subtree of ``options.layer`` when given, ``options.depth`` levels deep."""
    top = scope(root, options)
    if options.sort_by is None:
        selected = list(rows(top, resolve_depth(root, options)[0].depth))
    else:
        flat = [_own_row(layer) for layer in walk(top)
                if options.depth is None or layer.depth - top.depth <= options.depth]
        selected = sorted(flat, key=_SORT_VALUE[options.sort_by], reverse=True)
    return selected[: options.top] if options.top else selected


def auto_depths(
    root: Layer,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    units: str = "human",
    max_rows: int = MAX_AUTO_ROWS,
    max_width: int = MAX_WIDTH,
) -> tuple[int, int]:
    """The most levels below ``root`` (at least 1) whose tree table fits in ``max_rows`` rows, and
    the most whose table also fits its lines in ``max_width`` characters."""
    every = list(rows(root))
    relative = [row.depth - root.depth for row in every]
    widths = [[len(text) for text in cells(row, columns, root, units)] for row in every]
    total = total_cells(root, columns, units)
    fixed = [max(len(COLUMNS[c]) + _HEADER_PADDING, len(text)) for c, text in zip(columns, total)]
    by_rows = None
    for depth in range(max(relative), 0, -1):
        shown = [w for w, d in zip(widths, relative) if d <= depth]
        if len(shown) > max_rows:
            continue
        by_rows = by_rows or depth
        column_widths = [max(column) for column in zip(fixed, *shown)]
        if sum(column_widths) + _SEPARATOR * (len(columns) - 1) <= max_width:
            return by_rows, depth
    return by_rows or 1, 1


def auto_depth(root: Layer, columns: Sequence[str] = DEFAULT_COLUMNS, units: str = "human") -> int:
    """The most levels below ``root`` whose tree table fits in 40 rows of 100 characters (at least 1)."""
    return auto_depths(root, columns, units)[1]


def resolve_depth(root: Layer, options: TableOptions) -> tuple[TableOptions, int | None]:
    """``options`` with the depth a tree table shows by default filled in, and the deeper depth
    that would fit the rows but not the width (None when nothing is left out for the width)."""
    if options.sort_by is not None or options.depth is not None:
        return options, None
    by_rows, depth = auto_depths(scope(root, options), options.columns, options.units)
    return replace(options, depth=depth), by_rows if by_rows > depth else None


# ---------------------------------------------------------------- cells


def headers(options: TableOptions) -> list[str]:
    """Column titles. A flat ranking counts each layer's own work; its note says so, once."""
    return [COLUMNS[c] for c in options.columns]


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _first_shape(shapes: tuple[Shape, ...]) -> str:
    """The first output's shape; ", …" when the module returned more (every one is in the exports)."""
    return str(list(shapes[0])) + (", …" if len(shapes) > 1 else "") if shapes else ""


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _count(row: Row, value: int, units: str) -> str:
    """A count, or "uncounted" when none of the row's work has a rule; "+?" marks a lower bound."""
    if row.uncounted and row.counts == Counts():
        return "uncounted"
    return format_count(value, units) + (" +?" if row.uncounted else "")


def cell(row: Row, column: str, root: Layer, units: str) -> str:
    """One cell as text, on one line; percentages are of ``root`` (the table's scope)."""
    if column == "layer":
        return row.prefix + printable(row.label) + (f" ×{row.calls}" if row.calls > 1 else "")
    if row.status == "backward" and column not in _NEEDS_TRAINING:
        return ""  # a layer's own backward: it has no forward, shape or parameters of its own
    if column == "type":
        return printable(display_name(row.type))
    if column == "input_shape":
        return _shapes(row.input_shapes)
    if column == "output_shape":
        return "not run" if row.status == "not run" else _first_shape(row.output_shapes)
    if column == "calls":
        return str(row.calls)
    if column == "params":
        return "" if row.params is None else format_count(row.params, units)
    if column == "params_pct":
        return "" if row.params is None else _percent(row.params, root.params)
    if column in ("macs", "flops"):
        return _count(row, getattr(row.counts, column), units)
    if column == "macs_pct":
        if row.uncounted and row.counts == Counts():
            return "?"  # its share is unknown, not 0%
        return _percent(row.counts.macs, root.total.macs)
    if column == "time":
        return "" if row.time is None else format_seconds(row.time)
    if column == "flops_per_s":
        return "" if not row.time or row.uncounted else format_rate(row.counts.flops / row.time)
    if column == "bwd_flops":
        if row.backward is None:
            return ""
        return format_count(row.backward.flops, units) + (" +?" if row.backward_uncounted else "")
    if column == "act_bytes":
        return "" if row.activation_bytes is None else format_bytes(row.activation_bytes, units)
    if column == "bytes":
        return format_bytes(row.bytes, units)
    if column == "roofline_time":
        return "" if row.roofline_time is None else format_seconds(row.roofline_time)
    if column == "bound":
        return row.bound
    if column == "intensity":
        return f"{row.counts.flops / row.bytes:,.1f}" if row.bytes and not row.uncounted else ""
    raise ValueError(f"unknown column {column!r}; valid columns: {', '.join(COLUMNS)}")


def cells(row: Row, columns: Sequence[str], root: Layer, units: str) -> list[str]:
    return [cell(row, c, root, units) for c in columns]


def total_row(root: Layer) -> Row:
    """The totals of ``root``: the whole model, or the subtree a table is limited to."""
    return Row("", "Total", "", 0, 0, "counted", (), (), root.params, root.total, root.uncounted, root.time,
               root.backward, root.backward_uncounted_calls > 0, root.activation_bytes, root.bytes,
               root.roofline_time, root.bound)


def total_cells(root: Layer, columns: Sequence[str], units: str) -> list[str]:
    total = total_row(root)
    return [cell(total, c, root, units) if c in _TOTALS else "" for c in columns]


# ---------------------------------------------------------------- notes


def notes(root: Layer, options: TableOptions, deeper: int | None = None) -> list[str]:
    """What the numbers are, said once under the table: own work in a ranking, what a subtree
    table's Total and percentages are of, and the ``deeper`` depth left out for the width."""
    lines = []
    if deeper is not None:
        lines.append(f"Deeper levels are left out to fit {MAX_WIDTH} columns; depth={deeper} shows them.")
    if options.sort_by is not None:
        lines.append(f"Ranked by {COLUMNS[options.sort_by]}; each row is one layer alone (self), without its children.")
    top = scope(root, options)
    if top is not root:
        shares = []
        if root.total.macs:
            shares.append(f"{_percent(top.total.macs, root.total.macs)} of the model's MACs")
        if root.params:
            whose = "its" if shares else "the model's"
            shares.append(f"{_percent(top.params, root.params)} of {whose} params")
        lines.append(f"Total and percentages are of '{printable(top.name)}'" + (f": {', '.join(shares)}." if shares else "."))
    return lines


def uncounted_note(uncounted: Sequence[Uncounted]) -> str:
    """One line per uncounted module type or function: its work is missing from the totals."""
    if not uncounted:
        return ""
    lines = ["Uncounted (no rule; their work is not in the totals):"]
    for u in uncounted:
        shown = [f"'{printable(name)}'" if name else "the model" for name in u.layers[:3]]
        where = ", ".join(shown) + (", ..." if len(u.layers) > 3 else "")
        lines.append(f"  {u.kind} {printable(display_name(u.name))} ×{u.calls} in {where}")
    return "\n".join(lines)


# ---------------------------------------------------------------- output formats


def _markdown(text: str) -> str:
    r"""Backslash escapes for what GitHub markdown reads as a cell border (``|``), raw HTML
    (``<``, ``>``, ``&``) or an escape (``\``)."""
    return re.sub(r"([\\|<>&])", r"\\\1", text)


def _latex(text: str) -> str:
    """The escapes tabulate's "latex" format gives its cells (``_`` as ``\\_``...)."""
    return "".join(LATEX_ESCAPE_RULES.get(ch, ch) for ch in text)


def _no_bars(text: str) -> str:
    return text.replace("|", "¦")


_BAR_FORMATS = ("orgtbl", "jira", "mediawiki", "moinmoin", "youtrack", "textile", "asciidoc")
_CELL_ESCAPES: dict[str, Callable[[str], str]] = {
    "github": _markdown,
    "pipe": _markdown,
    "unsafehtml": html_escape,  # our cells are names from a model, never markup
    "latex_raw": _latex,
    **{fmt: _no_bars for fmt in _BAR_FORMATS},  # "|" separates their cells
}
_NOTE_ESCAPES: dict[str, Callable[[str], str]] = {
    "github": _markdown,
    "pipe": _markdown,
    **{fmt: _latex for fmt in ("latex", "latex_raw", "latex_booktabs", "latex_longtable")},
}


def _wrap(line: str) -> list[str]:
    indent = line[: len(line) - len(line.lstrip(" "))]
    return textwrap.wrap(line, MAX_WIDTH, subsequent_indent=indent + "  ", break_long_words=False,
                         break_on_hyphens=False) or [line]


def format_notes(blocks: Sequence[str], tablefmt: str) -> str:
    """Notes for after a table, escaped for ``tablefmt``: HTML paragraphs, or text wrapped to
    ``MAX_WIDTH`` with a blank line between blocks (so markdown does not read them as rows)."""
    blocks = [block for block in blocks if block]
    if tablefmt in ("html", "unsafehtml"):
        return "\n".join("<p>" + "<br>".join(html_escape(line) for line in block.splitlines()) + "</p>"
                         for block in blocks)
    escape = _NOTE_ESCAPES.get(tablefmt, str)
    return "\n\n".join("\n".join(escape(wrapped) for line in block.splitlines() for wrapped in _wrap(line))
                       for block in blocks)


def tabulate_text(body: list[list[str]], header: Sequence[str], colalign: Sequence[str], tablefmt: str,
                  notes: Sequence[str] = ()) -> str:
    """Cells (already one-line, see :func:`printable`) as a tabulate table in ``tablefmt``, each
    escaped for that format, and the notes under it."""
    escape = _CELL_ESCAPES.get(tablefmt, str)
    text = tabulate([[escape(c) for c in row] for row in body], headers=[escape(h) for h in header],
                    tablefmt=tablefmt, colalign=colalign, disable_numparse=True, preserve_whitespace=True)
    after = format_notes(notes, tablefmt)
    return f"{text}\n\n{after}" if after else text


def text_table(root: Layer, uncounted: Sequence[Uncounted], options: TableOptions, tablefmt: str = "simple") -> str:
    """The table as text (any tabulate ``tablefmt``), with a totals row, its notes and the uncounted list."""
    options.validate_for(root)
    options, deeper = resolve_depth(root, options)
    top = scope(root, options)
    columns = options.columns
    body = [cells(row, columns, top, options.units) for row in select_rows(root, options)]
    body.append(total_cells(top, columns, options.units))
    colalign = ["right" if c in NUMERIC else "left" for c in columns]
    return tabulate_text(body, headers(options), colalign, tablefmt,
                         ["\n".join(notes(root, options, deeper)), uncounted_note(uncounted)])
