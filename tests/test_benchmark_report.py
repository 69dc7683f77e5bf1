"""examples/benchmark.py's printed report, from rows built by hand (the benchmark itself is not run):
full model names in the worst line, parts measured below zero shown as noise, 100 columns."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from conftest import load_example

benchmark = load_example("benchmark")
TOOLS = [t for t in benchmark.TOOLS if t != "plain"]
PARTS = ("dispatch_ms", "hooks_ms", "mode_ms")


def row(model: str, plain_ms: float, ratios: tuple[float, ...], dispatch_ms: float, hooks_ms: float,
        mode_ms: float, modules: int = 10, functions: int = 20) -> dict:
    """A row as ``measure()`` returns it: ``added`` is ``hooks`` plus ``mode``."""
    return {
        "model": model, "plain_ms": plain_ms, "ratios": dict(zip(TOOLS, ratios)),
        "added_ms": hooks_ms + mode_ms, "dispatch_ms": dispatch_ms, "hooks_ms": hooks_ms, "mode_ms": mode_ms,
        "module_calls": modules, "function_calls": functions,
    }


ROWS = [
    row("small_lstm", 0.2, (1.65, 2.1, 3.4), dispatch_ms=-0.01, hooks_ms=0.09, mode_ms=0.05),
    row("chain_10k_linear128x32", 25.0, (1.46, 5.54, 4.99), dispatch_ms=3.8, hooks_ms=12.0, mode_ms=-0.4),
    row("mobilenet_v3_large", 12.0, (1.28, 2.63, 6.1), dispatch_ms=0.6, hooks_ms=2.9, mode_ms=0.5),
]


@pytest.fixture(scope="module")
def report() -> str:
    return benchmark.report(ROWS)


def test_worst_names_each_model_in_full(report):
    (worst,) = re.findall(r"^worst: .*(?:\n {7}.*)*", report, flags=re.MULTILINE)
    for tool in TOOLS:
        top = max(ROWS, key=lambda r: r["ratios"][tool])
        assert f"{tool} {top['ratios'][tool]:.2f}x on {top['model']}" in worst
    assert len({max(ROWS, key=lambda r: r["ratios"][t])["model"] for t in TOOLS}) == len(TOOLS)


def test_geometric_means(report):
    line = next(line for line in report.splitlines() if line.startswith("geometric mean"))
    means = [math.exp(statistics.fmean(math.log(r["ratios"][t]) for r in ROWS)) for t in TOOLS]
    assert line.split()[2:] == [f"{m:.2f}x" for m in means]


def test_parts_below_zero_are_noise_not_negative_times(report):
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "added"])
    columns = lines[header].split()
    cells = {line.split()[0]: dict(zip(columns, line.split())) for line in lines[header + 2: header + 2 + len(ROWS)]}
    for r in ROWS:
        for part in PARTS:
            shown = cells[r["model"]][part.removesuffix("_ms")]
            assert shown == ("~0" if r[part] < 0 else f"{r[part]:.2f}ms")
    assert not re.search(r"-\d", report)
    assert "~0: measured below zero" in report


def test_format_ms():
    assert benchmark.format_ms(-1e-3) == "~0"
    assert benchmark.format_ms(0.0) == f"{0.0:.2f}ms"
    assert benchmark.format_ms(12.345) == f"{12.345:.2f}ms"


def test_no_noise_note_without_negative_parts():
    clean = [dict(r, **{p: abs(r[p]) for p in PARTS}) for r in ROWS]
    assert "~0" not in benchmark.report(clean)


def test_report_fits_100_columns(report):
    assert max(len(line) for line in report.splitlines()) <= benchmark.WIDTH == 100
