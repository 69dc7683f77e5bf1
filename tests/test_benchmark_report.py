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


TRAINING_TOOLS = [t for t in benchmark.TRAINING_TOOLS if t != "plain"]


def training_row(model: str, step_ms: float, ratios: tuple[float, float], exact: bool | None) -> dict:
    """A row as ``measure_training()`` returns it; ``exact`` None: the step ran a fused kernel."""
    fused = ["aten._scaled_dot_product_flash_attention_for_cpu"] if exact is None else []
    return {"model": model, "step_ms": step_ms, "ratios": dict(zip(TRAINING_TOOLS, ratios)),
            "added_ms": step_ms * (ratios[0] - 1), "hookprof_matmul_flops": 10,
            "flop_counter_flops": 10 if exact else 8, "fused_kernels": fused, "grouped_convs": False, "exact": exact}


TRAINING_ROWS = [
    training_row("shufflenet_v2_x1_0", 90.0, (1.21, 1.60), exact=True),
    training_row("llama", 40.0, (1.12, 1.05), exact=None),
    training_row("chain_10k_linear128x32", 75.0, (1.35, 1.90), exact=False),
    {"model": "frozen", "skipped": "LossError: the model's output holds no floating-point tensor that requires "
                                   "grad, so there is no backward to count: is every parameter frozen?"},
]


@pytest.fixture(scope="module")
def training_report() -> str:
    return benchmark.training_report(TRAINING_ROWS)


def test_training_table_ratios_exact_and_geometric_means(training_report):
    lines = training_report.splitlines()
    assert lines[0].split() == ["model", "step", *TRAINING_TOOLS, "added", "exact"]
    cells = {line.split()[0]: line for line in lines[2:2 + 3]}
    timed = TRAINING_ROWS[:3]
    for r in timed:
        shown = [f"{r['step_ms']:.1f}ms", *(f"{r['ratios'][t]:.2f}x" for t in TRAINING_TOOLS)]
        assert cells[r["model"]].split()[1:4] == shown
    assert cells["shufflenet_v2_x1_0"].endswith(" yes")
    assert cells["chain_10k_linear128x32"].endswith(" no")
    assert cells["llama"].endswith(" n/a (fused kernel)")
    geo = next(line for line in lines if line.startswith("geometric mean"))
    means = [math.exp(statistics.fmean(math.log(r["ratios"][t]) for r in timed)) for t in TRAINING_TOOLS]
    assert geo.split()[2:] == [f"{m:.2f}x" for m in means]


def test_training_report_names_worst_above_skipped_and_target(training_report):
    (worst,) = re.findall(r"^worst: .*(?:\n {7}.*)*", training_report, flags=re.MULTILINE)
    for tool in TRAINING_TOOLS:
        top = max(TRAINING_ROWS[:3], key=lambda r: r["ratios"][tool])
        assert f"{tool} {top['ratios'][tool]:.2f}x on {top['model']}" in worst
    assert "profile_training at or above FlopCounterMode on: llama" in training_report
    assert "n/a (fused kernel): FlopCounterMode counts 0 for aten._scaled_dot_product_flash_attention_for_cpu" \
        in training_report
    assert "skipped frozen: LossError: the model's output holds no floating-point tensor" in training_report
    assert "frozen" not in training_report.split("skipped frozen")[0]  # not in the table nor the means
    assert training_report.splitlines()[-1] == (
        "target: geometric mean at most 1.3x a plain step, and below FlopCounterMode on every model")
    assert max(len(line) for line in training_report.splitlines()) <= benchmark.WIDTH


def test_training_report_below_flop_counter_everywhere():
    report = benchmark.training_report([r for r in TRAINING_ROWS if r["model"] != "llama"])
    assert "profile_training below FlopCounterMode on every model" in report
    assert "n/a (fused kernel)" not in report


def test_training_report_all_skipped():
    assert benchmark.training_report(TRAINING_ROWS[3:]).splitlines()[-1].startswith("target: ")


def test_generation_report_ratios_and_tokens():
    rows = [
        {"model": "gpt2", "plain_ms": 1496.4, "same_tokens": True,
         "ratios": {"generate": 0.98, "profile_generation": 1.25}},
        {"model": "llama_gqa", "plain_ms": 1436.4, "same_tokens": False,
         "ratios": {"generate": 1.02, "profile_generation": 1.31}},
    ]
    lines = benchmark.generation_report(rows).splitlines()
    assert lines[0].split() == ["model", "greedy", "loop", "generate", "profile_generation", "same", "tokens"]
    assert lines[2].split() == ["gpt2", "1496.4ms", "0.98x", "1.25x", "yes"]
    assert lines[3].split() == ["llama_gqa", "1436.4ms", "1.02x", "1.31x", "NO"]  # a mismatch is loud
    assert f"{benchmark.GENERATED_TOKENS} tokens" in lines[-1] and "1.3x" in lines[-1]
    assert max(len(line) for line in lines) <= benchmark.WIDTH
