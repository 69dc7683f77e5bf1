"""The report as plain data: dicts for JSON, flat rows for CSV and pandas. Pure functions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from profiler.tree import Layer, Uncounted, walk

__all__ = ["to_dict", "layer_records", "CSV_FIELDS", "to_csv_text", "to_json_text"]

CSV_FIELDS = (
    "name", "type", "depth", "calls", "status", "params", "own_params", "macs", "flops", "matmul_flops",
    "own_macs", "own_flops", "own_matmul_flops", "uncounted", "input_shapes", "output_shapes", "time", "own_time",
)


def layer_records(root: Layer) -> list[dict[str, Any]]:
    """One flat dict per layer in tree order: numbers as ints, shapes as lists, times in seconds."""
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
        }
        for layer in walk(root)
    ]


def to_dict(root: Layer, uncounted: Sequence[Uncounted]) -> dict[str, Any]:
    """The whole report as JSON-serialisable plain Python."""
    layers = []
    for layer, record in zip(walk(root), layer_records(root)):
        record["rule"] = layer.rule
        record["functions"] = [
            {"function": f.function, "calls": f.calls, "status": f.status, "macs": f.counts.macs,
             "flops": f.counts.flops, "matmul_flops": f.counts.matmul_flops}
            for f in layer.functions
        ]
        layers.append(record)
    return {
        "model": root.type,
        "totals": {
            "macs": root.total.macs,
            "flops": root.total.flops,
            "matmul_flops": root.total.matmul_flops,
            "params": root.params,
            "time": root.time,
        },
        "layers": layers,
        "uncounted": [
            {"kind": u.kind, "name": u.name, "calls": u.calls, "layers": list(u.layers)} for u in uncounted
        ],
    }


def to_json_text(root: Layer, uncounted: Sequence[Uncounted]) -> str:
    return json.dumps(to_dict(root, uncounted), indent=2)


def to_csv_text(root: Layer) -> str:
    """One row per layer; shapes as JSON lists, empty cells for missing times."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in layer_records(root):
        record["input_shapes"] = json.dumps(record["input_shapes"])
        record["output_shapes"] = json.dumps(record["output_shapes"])
        writer.writerow(record)
    return out.getvalue()
