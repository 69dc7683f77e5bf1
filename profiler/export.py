"""The report as plain data: dicts for JSON, flat rows for CSV and pandas. Pure functions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from profiler.tree import Layer, Uncounted, walk

__all__ = ["to_dict", "layer_records", "CSV_FIELDS", "TRAINING_FIELDS", "to_csv_text"]

CSV_FIELDS = (
    "name", "type", "depth", "calls", "status", "params", "own_params", "macs", "flops", "matmul_flops",
    "own_macs", "own_flops", "own_matmul_flops", "uncounted", "input_shapes", "output_shapes", "time", "own_time",
    "bytes_read", "bytes_written", "own_bytes_read", "own_bytes_written",
)
TRAINING_FIELDS = (
    "backward_macs", "backward_flops", "backward_matmul_flops", "own_backward_macs", "own_backward_flops",
    "own_backward_matmul_flops", "backward_uncounted", "activation_bytes", "own_activation_bytes",
    "backward_bytes", "own_backward_bytes",
)
"""The columns a training profile adds to each layer."""


def _training_fields(layer: Layer) -> dict[str, Any]:
    return {
        "backward_macs": layer.backward.macs,
        "backward_flops": layer.backward.flops,
        "backward_matmul_flops": layer.backward.matmul_flops,
        "own_backward_macs": layer.own_backward.macs,
        "own_backward_flops": layer.own_backward.flops,
        "own_backward_matmul_flops": layer.own_backward.matmul_flops,
        "backward_uncounted": layer.backward_uncounted_calls > 0,
        "activation_bytes": layer.activation_bytes,
        "own_activation_bytes": layer.own_activation_bytes,
        "backward_bytes": layer.backward_bytes,
        "own_backward_bytes": layer.own_backward_bytes,
    }


def layer_records(root: Layer) -> list[dict[str, Any]]:
    """One flat dict per layer in tree order: numbers as ints, shapes as lists, times in seconds;
    a training profile's backward counts and activation bytes too."""
    return [
        {
            "name": layer.name,
            "type": layer.type,
            "depth": layer.depth,
            "calls": layer.calls,
            "status": layer.status,
            "params": layer.params,
            "own_params": layer.own_params,
            "macs": layer.total.macs,
            "flops": layer.total.flops,
            "matmul_flops": layer.total.matmul_flops,
            "own_macs": layer.own.macs,
            "own_flops": layer.own.flops,
            "own_matmul_flops": layer.own.matmul_flops,
            "uncounted": layer.uncounted,
            "input_shapes": [list(s) for s in layer.input_shapes],
            "output_shapes": [list(s) for s in layer.output_shapes],
            "time": layer.time,
            "own_time": layer.own_time,
            "bytes_read": layer.bytes_read,
            "bytes_written": layer.bytes_written,
            "own_bytes_read": layer.own_bytes_read,
            "own_bytes_written": layer.own_bytes_written,
            **(_training_fields(layer) if layer.backward is not None else {}),
            **({"roofline_time": layer.roofline_time, "bound": layer.bound} if layer.roofline_time is not None else {}),
        }
        for layer in walk(root)
    ]


def to_dict(root: Layer, uncounted: Sequence[Uncounted]) -> dict[str, Any]:
    """The whole report as JSON-serialisable plain Python."""
    layers = []
    for layer, record in zip(walk(root), layer_records(root)):
        record["rule"] = layer.rule
        record["functions"] = _functions(layer.functions)
        if layer.backward is not None:
            record["backward_functions"] = _functions(layer.backward_functions)
        layers.append(record)
    totals = {
        "macs": root.total.macs,
        "flops": root.total.flops,
        "matmul_flops": root.total.matmul_flops,
        "params": root.params,
        "time": root.time,
        "bytes_read": root.bytes_read,
        "bytes_written": root.bytes_written,
    }
    if root.backward is not None:
        totals.update(backward_macs=root.backward.macs, backward_flops=root.backward.flops,
                      backward_matmul_flops=root.backward.matmul_flops,
                      training_flops=root.total.flops + root.backward.flops, activation_bytes=root.activation_bytes)
    if root.roofline_time is not None:
        totals.update(roofline_time=root.roofline_time, bound=root.bound)
    return {
        "model": root.type,
        "totals": totals,
        "layers": layers,
        "uncounted": [
            {"kind": u.kind, "name": u.name, "calls": u.calls, "layers": list(u.layers)} for u in uncounted
        ],
    }


def _functions(stats) -> list[dict[str, Any]]:
    return [
        {"function": f.function, "calls": f.calls, "status": f.status, "macs": f.counts.macs,
         "flops": f.counts.flops, "matmul_flops": f.counts.matmul_flops, "bytes_read": f.bytes_read,
         "bytes_written": f.bytes_written}
        for f in stats
    ]


def to_csv_text(root: Layer) -> str:
    """One row per layer; shapes as JSON lists, empty cells for missing times."""
    out = io.StringIO()
    fields = CSV_FIELDS + (TRAINING_FIELDS if root.backward is not None else ()) \
        + (("roofline_time", "bound") if root.roofline_time is not None else ())
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in layer_records(root):
        record["input_shapes"] = json.dumps(record["input_shapes"])
        record["output_shapes"] = json.dumps(record["output_shapes"])
        writer.writerow(record)
    return out.getvalue()
