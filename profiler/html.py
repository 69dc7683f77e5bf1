"""The notebook view: the same rows as the text table, as one self-contained HTML table.

Every piece of text from the model (names, types, notes) is escaped; numbers and the bars' widths
are the only markup built from data.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from profiler.render import (
    NUMERIC,
    TableOptions,
    cell,
    display_name,
    headers,
    notes,
    printable,
    resolve_depth,
    scope,
    select_rows,
    total_row,
)
from profiler.tree import Layer, Uncounted

__all__ = ["html_table"]

_STYLE = (
    "<style>"
    ".hookprof td, .hookprof th {text-align: right; padding: 2px 8px; white-space: nowrap;"
    " font-family: ui-monospace, monospace; font-size: 12px}"
    ".hookprof td.text, .hookprof th.text {text-align: left}"
    ".hookprof tr.total td {font-weight: bold; border-top: 1px solid #999}"
    ".hookprof .track {display: inline-block; width: 100px; height: 0.8em; margin-left: 6px;"
    " vertical-align: middle; background: #e8e8e8}"
    ".hookprof .track.empty {background: none}"
    ".hookprof .bar {display: block; height: 100%; background: #4c78a8}"
    "</style>"
)


def _bar(text: str, share: float | None) -> str:
    """The percentage, then a bar in a track of fixed width (an empty track where the share is not
    known). The track ends the right-aligned cell, so every bar starts at the same x and the
    percentages line up."""
    if share is None:
        return f'{text}<span class="track empty"></span>'
    width = max(0.0, min(100.0, 100 * share))
    return f'{text}<span class="track"><span class="bar" style="width: {width:.1f}%"></span></span>'


def _shapes_title(shapes: Sequence[tuple[int, ...]]) -> str:
    """Every output shape, for the tooltip of a cell that shows only the first."""
    return ", ".join(str(list(s)) for s in shapes)


def html_table(root: Layer, uncounted: Sequence[Uncounted], options: TableOptions) -> str:
    """The table as HTML: indented layer tree, a share bar for MACs %, totals, notes and uncounted work."""
    options.validate_for(root)
    options, deeper = resolve_depth(root, options)
    top = scope(root, options)
    columns = options.columns
    head = "".join(
        f'<th class="{"num" if c in NUMERIC else "text"}">{escape(h)}</th>' for c, h in zip(columns, headers(options))
    )
    lines = [_STYLE, '<table class="hookprof">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    body = [(row, "") for row in select_rows(root, options)] + [(total_row(top), "total")]
    for row, css in body:
        tds = []
        for c in columns:
            title = ""
            if css == "total" and c in ("type", "input_shape", "output_shape", "calls"):
                text = ""
            elif c == "layer":
                text = escape(cell(row, c, top, options.units).removeprefix(row.prefix))
                indent = 0 if options.sort_by or css == "total" else row.depth - top.depth
                text = f'<span style="padding-left: {1.2 * indent:.1f}em">{text}</span>'
            elif c == "macs_pct" and top.total.macs:
                share = None if row.uncounted else row.counts.macs / top.total.macs
                text = _bar(escape(cell(row, c, top, options.units)), share)
            else:
                text = escape(cell(row, c, top, options.units))
                if c == "output_shape" and len(row.output_shapes) > 1:
                    title = f' title="{escape(_shapes_title(row.output_shapes))}"'
            tds.append(f'<td class="{"num" if c in NUMERIC else "text"}"{title}>{text}</td>')
        lines.append(f'<tr class="{css}">' + "".join(tds) + "</tr>")
    lines += ["</tbody>", "</table>"]
    lines += [f"<p>{escape(line)}</p>" for line in notes(root, options, deeper)]
    if uncounted:
        items = "".join(
            f"<li>{escape(u.kind)} <code>{escape(printable(display_name(u.name)))}</code> ×{u.calls} in "
            + ", ".join(f"<code>{escape(printable(name)) or '(model)'}</code>" for name in u.layers)
            + "</li>"
            for u in uncounted
        )
        lines.append(f"<p>Uncounted (no rule; their work is not in the totals):</p><ul>{items}</ul>")
    return "\n".join(lines)
