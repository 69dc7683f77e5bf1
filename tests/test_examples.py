"""Every example script runs and prints what it promises."""

from __future__ import annotations

import json
import re

import pytest

from conftest import EXAMPLES, load_example


def test_transformer_flops(capsys):
    load_example("transformer_flops").main()
    out = capsys.readouterr().out
    assert "hookprof: 21,790,720 MACs" in out and "thop:     10,485,760" in out


def test_torchvision_models(capsys):
    load_example("torchvision_models").main()
    out = capsys.readouterr().out
    assert "The ten layers doing the most work themselves" in out and "to_csv(): " in out


def test_huggingface(capsys):
    load_example("huggingface").main()
    out = capsys.readouterr().out
    eager, sdpa = out.split("eager attention: ")[1].split(" MACs; sdpa: ")
    assert eager == sdpa.split(" MACs")[0]


def test_custom_rule(capsys):
    load_example("custom_rule").main()
    line = capsys.readouterr().out.splitlines()[0]
    # (x @ U) @ V on [8, 256] with rank 16, twice: 2 * 8 * 256 * 16 MACs per LowRankLinear
    assert line == f"traced matmuls: {2 * 2 * 8 * 256 * 16:,} MACs; rule: {2 * 2 * 8 * 256 * 16:,}; thop-style rule: {2 * 2 * 8 * 256 * 16:,}"


def test_my_models_command_is_the_readmes():
    """examples/my_models.py is a model file for the command line (tests/test_readme.py runs the command)."""
    doc = load_example("my_models").__doc__
    (command,) = [line.strip() for line in doc.splitlines() if line.strip().startswith("python -m profiler ")]
    assert command in (EXAMPLES.parent / "README.md").read_text().splitlines()


def test_llm_on_meta(capsys):
    load_example("llm_on_meta").main()
    out = capsys.readouterr().out
    assert "params: 70,553,706,496" in out and "Mixtral-8x7B shape" in out


def test_llm_serving(capsys):
    load_example("llm_serving").main()
    out = capsys.readouterr().out
    assert out.startswith("Phase") and "KV cache after 24 new tokens" in out
    per_token = re.search(r"roofline time per token: +([\d.]+) ms", out).group(1)
    bound = re.search(r"TB/s: ([\d.]+) ms", out).group(1)
    assert abs(float(per_token) - float(bound)) / float(bound) < 0.05


def test_benchmark(tmp_path, capsys):
    path = tmp_path / "bench.json"
    load_example("benchmark").main(["--models", "seed_transformer,small_lstm", "--repeats", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "geometric mean" in out
    rows = json.loads(path.read_text())["rows"]
    assert [r["model"] for r in rows] == ["seed_transformer", "small_lstm"]
    assert all(r["ratios"]["hookprof"] > 0 for r in rows)
    assert all(r["hooks_ms"] + r["mode_ms"] == pytest.approx(r["added_ms"]) for r in rows)
    assert all("dispatch_ms" in r for r in rows)


def test_benchmark_scale_model_and_unknown_names(tmp_path, capsys):
    benchmark = load_example("benchmark")
    path = tmp_path / "bench.json"
    benchmark.main(["--models", "loop_100_grucell64x8", "--repeats", "1", "--json", str(path)])
    (row,) = json.loads(path.read_text())["rows"]
    assert row["module_calls"] == 1 + 100  # the loop, then its shared cell once per step
    with pytest.raises(SystemExit):
        benchmark.main(["--models", "resnet18,nope"])
    assert "unknown model(s) nope" in capsys.readouterr().err
