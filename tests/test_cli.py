"""``python -m profiler`` / ``hookprof``: real models as subprocesses, every flag, and one-line errors.

The subprocesses start together (each spends most of its time importing torch) and are checked
one by one; the flag tests call ``profiler.cli.main`` in-process on a model file written to a tmp dir.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import thop
import torch
import torchvision
import transformers

from profiler import profile
from profiler.cli import FORMATS, main
from profiler.render import COLUMNS

from test_report import HTMLTable, github_cells

MODEL_FILE = "models/net.py"  # relative to the working directory, as a user would type it
EXIT_FILE = "models/exits.py"  # calls sys.exit(EXIT_CODE) while being imported
EXIT_CODE = 5

MODEL_SOURCE = '''\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Linear(4, width)
        self.act = nn.ReLU()
        self.b = nn.Linear(width, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(6, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class Config:
    def __init__(self, width=8, depth=1):
        self.width = width
        self.depth = depth


class FromConfig(nn.Module):
    def __init__(self, config, scale=1):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(4, 4) for _ in range(config.depth)])
        self.out = nn.Linear(4, config.width * scale)

    def forward(self, x):
        return self.out(self.layers(x))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli")
    (directory / "models").mkdir()
    (directory / MODEL_FILE).write_text(MODEL_SOURCE)
    (directory / EXIT_FILE).write_text(f"import sys\n\nsys.exit({EXIT_CODE})\n")
    return directory


@pytest.fixture(scope="module")
def models(workdir) -> dict:
    """The model file's classes, for building the expected results in-process."""
    return runpy.run_path(str(workdir / MODEL_FILE))


@pytest.fixture
def in_workdir(workdir, monkeypatch) -> Path:
    monkeypatch.chdir(workdir)
    return workdir


def without_times(data: dict) -> dict:
    data = copy.deepcopy(data)
    data["totals"].pop("time")
    for layer in data["layers"]:
        layer.pop("time")
        layer.pop("own_time")
    return data


# ---------------------------------------------------------------- subprocesses

GPT2_CONFIG = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}
HOOKPROF = shutil.which("hookprof", path=str(Path(sys.executable).parent)) or shutil.which("hookprof")
MODULE = [sys.executable, "-m", "profiler"]

SUBPROCESS_RUNS = {
    "resnet18": MODULE + ["torchvision.models:resnet18", "--input-size", "1,3,64,64", "--format", "json"],
    "gpt2": MODULE + ["transformers:GPT2LMHeadModel", "--config", "transformers:GPT2Config",
                      *(f"{k}={v}" for k, v in GPT2_CONFIG.items()),
                      "--input-size", "1,16", "--input-dtype", "long", "--format", "json"],
    "help": [HOOKPROF or "hookprof", "--help"],
    "version": MODULE + ["--version"],
}

# (id, arguments, a fragment the one-line error names)
BAD_INPUTS = [
    ("no-colon", [MODEL_FILE.replace(".py", ""), "--input-size", "3,4"], "is not MODULE:ATTR"),
    ("unknown-module", ["hookprof_no_such_module:Net", "--input-size", "3,4"], "'hookprof_no_such_module'"),
    ("unknown-attribute", [f"{MODEL_FILE}:Nope", "--input-size", "3,4"], "'Nope'"),
    ("bad-input-size", [f"{MODEL_FILE}:Net", "--input-size", "3,x"], "'3,x'"),
    ("negative-input-size", [f"{MODEL_FILE}:Net", "--input-size", "3,-4"], "'3,-4'"),
    ("bad-input-dtype", [f"{MODEL_FILE}:Net", "--input-size", "3,4", "--input-dtype", "floaty"], "'floaty'"),
    ("forward-fails", [f"{MODEL_FILE}:Net", "--input-size", "3,5"], "'a' (Linear)"),
    ("bad-arg", [f"{MODEL_FILE}:Net", "--input-size", "3,4", "--arg", "width"], "'width' is not KEY=VALUE"),
    ("unknown-column", [f"{MODEL_FILE}:Net", "--input-size", "3,4", "--columns", "layer,weights"], "'weights'"),
    ("sys-exit-on-import", [f"{EXIT_FILE}:Net", "--input-size", "3,4"], f"{EXIT_FILE} called sys.exit({EXIT_CODE})"),
]
SUBPROCESS_RUNS.update({f"bad-{name}": MODULE + args for name, args, _ in BAD_INPUTS})


@pytest.fixture(scope="module")
def finished(workdir) -> dict[str, subprocess.CompletedProcess]:
    """Every run in ``SUBPROCESS_RUNS``, started at once in the tmp working directory, then awaited."""
    started = {
        name: subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in SUBPROCESS_RUNS.items()
        if argv[0] is not None and (name != "help" or HOOKPROF)
    }
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(SUBPROCESS_RUNS[name], process.returncode, out, err)
    return done


def test_resnet18_json_equals_profile(finished):
    run = finished["resnet18"]
    assert run.returncode == 0, run.stderr
    expected = profile(torchvision.models.resnet18(weights=None), input_size=(1, 3, 64, 64)).to_dict()
    assert without_times(json.loads(run.stdout)) == without_times(expected)


def test_gpt2_from_config_json_equals_profile(finished):
    run = finished["gpt2"]
    assert run.returncode == 0, run.stderr
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_CONFIG))
    expected = profile(model, input_size=(1, 16), input_dtype=torch.long).to_dict()
    data = json.loads(run.stdout)
    assert without_times(data) == without_times(expected)
    assert data["totals"]["params"] == sum(p.numel() for p in model.parameters())


def test_version(finished):
    run = finished["version"]
    assert run.returncode == 0
    assert run.stdout == f"hookprof {importlib.metadata.version('hookprof')}\n"
    assert run.stderr == ""  # nothing else on a first import, e.g. torch's "Failed to initialize NumPy"


def test_console_script_help(finished):
    assert HOOKPROF is not None, "the hookprof console script is not installed (pip install -e .)"
    run = finished["help"]
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: hookprof")
    assert "--input-size" in run.stdout and "examples:" in run.stdout


@pytest.mark.parametrize(("name", "args", "fragment"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(finished, name, args, fragment):
    run = finished[f"bad-{name}"]
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("hookprof: error:")
    assert fragment in lines[0]
    assert run.stdout == ""


# ---------------------------------------------------------------- every flag, in-process


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def cli_ok(argv: list[str], capsys) -> str:
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    return out


def net_macs(width: int, rows: int = 3) -> int:
    return rows * 4 * width + rows * width * 2


NET = [f"{MODEL_FILE}:Net", "--input-size", "3,4"]
FLAG_RUNS: list[list[str]] = []  # every argv below, for the coverage check at the end


def flag_run(*argv: str) -> list[str]:
    FLAG_RUNS.append(list(argv))
    return list(argv)


TEXT_DEFAULT = flag_run(*NET)
ARG = flag_run(*NET, "--arg", "width=1000", "--units", "exact")
ARG_HUMAN = flag_run(*NET, "--arg", "width=1000", "--units", "human")
CONFIG = flag_run(f"{MODEL_FILE}:FromConfig", "--config", f"{MODEL_FILE}:Config", "width=6", "depth=2",
                  "--arg", "scale=2", "--input-size", "5,4", "--units", "exact")
TWO_INPUTS = flag_run(f"{MODEL_FILE}:TwoInputs", "--input-size", "3,4", "--input-size", "3,6", "--format", "json")
TOKENS = flag_run(f"{MODEL_FILE}:Tokens", "--input-size", "2,7", "--input-dtype", "long", "--format", "json")
DEVICE_CPU = flag_run(*NET, "--device", "cpu", "--format", "json")
DEVICE_META = flag_run(*NET, "--device", "meta", "--format", "json")
DEPTH_0 = flag_run(*NET, "--depth", "0", "--format", "github")
COLUMNS_RUN = flag_run(*NET, "--columns", "layer,calls,input_shape,params_pct", "--format", "markdown")
SORT_TOP = flag_run(*NET, "--arg", "width=16", "--sort", "macs", "--top", "3", "--units", "exact", "--format", "github")
TIMED = flag_run(*NET, "--measure-time", "--repeats", "2", "--format", "github")
TIMED_JSON = flag_run(*NET, "--measure-time", "--repeats", "1", "--format", "json")
VS_THOP_TEXT = flag_run(*NET, "--vs-thop")
VS_THOP_JSON = flag_run(*NET, "--vs-thop", "--format", "json")
FORMAT_RUNS = {fmt: flag_run(*NET, "--format", fmt) for fmt in FORMATS}
TRAIN = flag_run(*NET, "--train", "--optimizer", "adamw", "--format", "json")


def test_train_json_is_the_training_profile(in_workdir, capsys, models):
    out = cli_ok(TRAIN, capsys)
    from profiler import profile_training

    expected = profile_training(models["Net"](), input_size=(3, 4), optimizer="adamw")
    assert json.loads(out)["totals"] == expected.to_dict()["totals"]
    assert json.loads(out)["memory"] == expected.memory.to_dict()


TRAIN_ROOFLINE_JSON = flag_run(*NET, "--train", "--optimizer", "adam", "--roofline", "H100-SXM5", "--format", "json")
TRAIN_ROOFLINE_TEXT = flag_run(*NET, "--train", "--optimizer", "adam", "--roofline", "H100-SXM5", "--units", "exact")


def test_train_with_roofline_json_keeps_the_training_figures(in_workdir, capsys, models):
    from profiler import profile_training

    data = json.loads(cli_ok(TRAIN_ROOFLINE_JSON, capsys))
    expected = profile_training(models["Net"](), input_size=(3, 4), optimizer="adam")
    estimate = expected.roofline("H100-SXM5")
    assert data["memory"] == expected.memory.to_dict()
    assert data["totals"] == estimate.to_dict()["totals"]
    assert data["totals"]["backward_flops"] == expected.backward_flops
    assert data["roofline"]["device"] == "H100-SXM5"


def test_train_with_roofline_text_has_the_estimates_and_the_training_summary(in_workdir, capsys, models):
    from profiler import profile_training
    from profiler.training import training_summary

    out = cli_ok(TRAIN_ROOFLINE_TEXT, capsys)
    expected = profile_training(models["Net"](), input_size=(3, 4), optimizer="adam")
    estimate = expected.roofline("H100-SXM5")
    assert out.strip() == estimate.table(units="exact") + "\n\n" + training_summary(expected, "exact")
    assert "Bwd FLOPs" in out.splitlines()[0] and "Est. time" in out.splitlines()[0]


def test_default_text_table(in_workdir, capsys, models):
    out = cli_ok(TEXT_DEFAULT, capsys)
    expected = profile(models["Net"](), input_size=(3, 4))
    assert out.strip() == expected.table()
    assert out.splitlines()[-1].split()[0] == "Total"


def test_arg_and_units(in_workdir, capsys):
    exact = cli_ok(ARG, capsys)
    human = cli_ok(ARG_HUMAN, capsys)
    macs = net_macs(1000)
    assert f"{macs:,}" in exact.splitlines()[-1]
    assert f"{macs / 10**3:.2f}K" in human.splitlines()[-1] and f"{macs:,}" not in human


def test_config_and_arg(in_workdir, capsys):
    out = cli_ok(CONFIG, capsys)
    width, depth, scale, rows = 6, 2, 2, 5
    macs = depth * rows * 4 * 4 + rows * 4 * width * scale
    params = depth * (4 * 4 + 4) + 4 * width * scale + width * scale
    total = out.splitlines()[-1]
    assert f"{macs:,}" in total and f"{params:,}" in total


def test_two_inputs(in_workdir, capsys):
    data = json.loads(cli_ok(TWO_INPUTS, capsys))
    assert data["layers"][0]["input_shapes"] == [[3, 4], [3, 6]]
    assert data["totals"]["macs"] == 3 * 4 * 8 + 3 * 6 * 8


def test_input_dtype_long(in_workdir, capsys, models):
    data = json.loads(cli_ok(TOKENS, capsys))
    expected = profile(models["Tokens"](), input_size=(2, 7), input_dtype=torch.long).to_dict()
    assert without_times(data) == without_times(expected)
    assert data["totals"]["macs"] == 2 * 7 * 4 * 3


def test_device_meta_counts_like_cpu(in_workdir, capsys):
    cpu = json.loads(cli_ok(DEVICE_CPU, capsys))
    meta = json.loads(cli_ok(DEVICE_META, capsys))
    assert without_times(meta) == without_times(cpu)
    assert cpu["totals"]["macs"] == net_macs(8)


def test_depth(in_workdir, capsys):
    header, rows = github_cells(cli_ok(DEPTH_0, capsys))
    assert [row[0] for row in rows] == ["Net", "Total"]


def test_columns(in_workdir, capsys):
    header, rows = github_cells(cli_ok(COLUMNS_RUN, capsys))
    assert header == [COLUMNS[c] for c in ("layer", "calls", "input_shape", "params_pct")]
    assert rows[-1][-1] == "100.0%"


def test_sort_and_top(in_workdir, capsys):
    header, rows = github_cells(cli_ok(SORT_TOP, capsys))
    assert len(rows) == 3 + 1
    macs = [int(row[header.index(COLUMNS["macs"])].replace(",", "")) for row in rows[:-1]]
    assert macs == [3 * 4 * 16, 3 * 16 * 2, 0]
    assert rows[-1][header.index(COLUMNS["macs"])] == f"{net_macs(16):,}"


def test_measure_time_and_repeats(in_workdir, capsys):
    header, rows = github_cells(cli_ok(TIMED, capsys))
    assert header[-2:] == [COLUMNS["time"], COLUMNS["flops_per_s"]]
    assert all(row[header.index("Time")] for row in rows)
    data = json.loads(cli_ok(TIMED_JSON, capsys))
    assert data["totals"]["time"] > 0
    assert all(layer["time"] > 0 for layer in data["layers"])


def test_vs_thop(in_workdir, capsys, models):
    model = models["Net"]()
    thop_macs, thop_params = thop.profile(copy.deepcopy(model), inputs=(torch.rand(3, 4),), verbose=False)
    text = cli_ok(VS_THOP_TEXT, capsys)
    assert "thop MACs" in text and "Total MACs" in text
    data = json.loads(cli_ok(VS_THOP_JSON, capsys))
    assert (data["thop"]["macs"], data["thop"]["params"]) == (thop_macs, thop_params)
    assert data["thop"]["differences"] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format(in_workdir, capsys, models, fmt):
    out = cli_ok(FORMAT_RUNS[fmt], capsys)
    result = profile(models["Net"](), input_size=(3, 4))
    if fmt == "json":
        assert without_times(json.loads(out)) == without_times(result.to_dict())
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [row["name"] for row in rows] == [layer.name for layer in result.layers]
        assert [int(row["macs"]) for row in rows] == [layer.total.macs for layer in result.layers]
    elif fmt == "html":
        parsed = HTMLTable(out)
        assert parsed.errors == [] and "table" in parsed.tags
        assert len(parsed.rows) == len(result.layers) + 1
    elif fmt in ("github", "markdown"):
        assert out.strip() == result.to_markdown()
    else:
        assert out.strip() == result.table()


def test_every_help_flag_is_exercised(finished):
    help_text = finished["help"].stdout if "help" in finished else ""
    assert help_text, "no help text from the console script"
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text)) - {"--help"}
    used = {arg for argv in FLAG_RUNS + list(SUBPROCESS_RUNS.values()) for arg in argv}
    assert flags and flags <= used, flags - used
    choices = re.search(r"--format \{([a-z,]+)\}", help_text).group(1).split(",")
    assert set(choices) == set(FORMATS) and set(FORMAT_RUNS) == set(FORMATS)


# ---------------------------------------------------------------- misuse that once slipped through


@pytest.mark.parametrize("fmt", ["html", "csv"])
def test_vs_thop_is_not_silently_dropped(in_workdir, capsys, fmt):
    code, out, err = cli([*NET, "--vs-thop", "--format", fmt], capsys)
    if code == 2:
        assert err.startswith("hookprof: error:") and "--vs-thop" in err
    else:
        assert code == 0 and "thop" in out


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_unknown_column_is_an_error_in_every_format(in_workdir, capsys, fmt):
    code, out, err = cli([*NET, "--columns", "layer,weights", "--format", fmt], capsys)
    assert code == 2 and "'weights'" in err


DATACLASS_SOURCE = '''\
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Config:
    width: int = 8


class Net(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"expected a Config, got {type(config)}")
        self.fc = nn.Linear(4, config.width)

    def forward(self, x):
        return self.fc(x)
'''


def test_model_file_with_a_dataclass(in_workdir, capsys):
    (in_workdir / "models" / "dc.py").write_text(DATACLASS_SOURCE.replace("isinstance(config, Config)", "True"))
    out = cli_ok(["models/dc.py:Net", "--config", "models/dc.py:Config", "width=6", "--input-size", "2,4",
                  "--units", "exact"], capsys)
    assert f"{2 * 4 * 6:,}" in out.splitlines()[-1]


def test_model_and_config_from_one_file(in_workdir, capsys):
    source = DATACLASS_SOURCE.replace("from __future__ import annotations\n", "")
    (in_workdir / "models" / "same.py").write_text(source)
    out = cli_ok(["models/same.py:Net", "--config", "models/same.py:Config", "width=6", "--input-size", "2,4",
                  "--units", "exact"], capsys)
    assert f"{2 * 4 * 6:,}" in out.splitlines()[-1]


def test_argparse_errors_are_one_line(in_workdir, capsys):
    code, out, err = cli([*NET, "--sort", "latency"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith("hookprof: error:")


@pytest.mark.parametrize("repeats", [0, -3])
def test_repeats_below_one_is_refused(in_workdir, capsys, repeats):
    code, out, err = cli([*NET, "--measure-time", "--repeats", str(repeats)], capsys)
    assert (code, out) == (2, "")
    assert err == f"hookprof: error: --repeats {repeats} must be at least 1\n"


@pytest.mark.parametrize(("module", "name"), [("torchvision.models", "resnet50"), (MODEL_FILE, "Net")],
                         ids=["package", "file"])
def test_misspelt_name_suggests_the_closest(in_workdir, capsys, module, name):
    typo = name.replace("0", "O") if "0" in name else name + name[-1]
    code, out, err = cli([f"{module}:{typo}", "--input-size", "3,4"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"hookprof: error: {module!r} has no attribute {typo!r}; did you mean {name!r}")
    assert err.endswith("?\n") and err.count("\n") == 1


DEEP_SOURCE = """\
from torch import nn


def deep(layers):
    return nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])
"""
DEEP_LAYERS = 1000  # a JSON export far larger than a pipe's buffer, so the writer is cut off mid-write


def test_reader_leaving_early_is_quiet(in_workdir):
    """``hookprof ... | head -1``, and a reader gone before the first byte: no traceback, nothing on stderr."""
    (in_workdir / "models" / "deep.py").write_text(DEEP_SOURCE)
    deep = [*MODULE, "models/deep.py:deep", "--arg", f"layers={DEEP_LAYERS}", "--input-size", "1,4", "--format", "json"]
    head = subprocess.Popen(f"{shlex.join(deep)} | head -1", shell=True, cwd=in_workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read, write = os.pipe()
    os.close(read)
    closed = subprocess.Popen([*MODULE, *NET], cwd=in_workdir, stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    out, head_err = head.communicate(timeout=300)
    _, closed_err = closed.communicate(timeout=300)
    assert (out, head_err) == (json.dumps({}, indent=2)[0] + "\n", "")
    assert closed_err == ""
    assert closed.returncode == 1  # as the Python documentation's recipe for SIGPIPE does


# ---------------------------------------------------------------- serving: --generate and --roofline

GPT2_TINY = ["transformers:GPT2LMHeadModel", "--config", "transformers:GPT2Config", "n_layer=1", "n_embd=32", "n_head=2",
             "vocab_size=50", "n_positions=32"]
GENERATE_JSON = flag_run(*GPT2_TINY, "--input-size", "2,5", "--generate", "3", "--format", "json")
GENERATE_FULL_LOGITS = flag_run(*GENERATE_JSON, "--full-logits")
GENERATE_ROOFLINE = flag_run(*GPT2_TINY, "--input-size", "1,5", "--generate", "3", "--roofline", "L4", "--depth", "1")
ROOFLINE_JSON = flag_run(*NET, "--roofline", "H100-SXM5", "--roofline-dtype", "tf32", "--format", "json")


def test_generate_json_is_profile_generation(capsys):
    import transformers

    from profiler import profile_generation

    data = json.loads(cli_ok(GENERATE_JSON, capsys))
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=32)
    expected = profile_generation(transformers.GPT2LMHeadModel(config), torch.zeros((2, 5), dtype=torch.long),
                                  max_new_tokens=3)
    assert data["totals"]["flops"] == expected.total_flops
    assert [p["context"] for p in data["phases"]] == [5, 6, 7]


def test_full_logits_counts_the_head_at_every_prompt_position(capsys):
    last = json.loads(cli_ok(GENERATE_JSON, capsys))
    every = json.loads(cli_ok(GENERATE_FULL_LOGITS, capsys))
    batch, prompt, d, vocab = 2, 5, 32, 50
    assert every["totals"]["prefill_logits"] == "all" and last["totals"]["prefill_logits"] == "last"
    assert every["phases"][0]["matmul_flops"] - last["phases"][0]["matmul_flops"] == batch * 2 * (prompt - 1) * d * vocab


def test_generate_with_roofline_shows_phases_and_decode_layers(capsys):
    out = cli_ok(GENERATE_ROOFLINE, capsys)
    phases, _, layers = out.partition("Decode steps, by layer:")
    assert [line.split()[0] for line in phases.splitlines()[2:6]] == ["prefill", "decode", "decode", "Total"]
    assert "Est. time" in phases and "tokens/s" in phases and "On L4" in phases
    assert layers.splitlines()[1].split() == [COLUMNS[c] for c in ("layer", "type", "flops", "bytes")] + [
        "FLOP/B", "Est.", "time", "Bound"]


def test_roofline_json_is_the_result_s_roofline(in_workdir, capsys, models):
    data = json.loads(cli_ok(ROOFLINE_JSON, capsys))
    expected = profile(models["Net"](), input_size=(3, 4)).roofline("H100-SXM5", "tf32")
    assert data["totals"]["roofline_time"] == expected.time
    assert data["totals"]["bound"] == expected.bound == "memory"


@pytest.mark.parametrize("extra, message", [
    (["--roofline", "B200"], "known devices: A100-SXM4-80GB, H100-SXM5"),
    (["--roofline", "L4", "--roofline-dtype", "float64"], "L4 has no peak FLOP/s for float64"),
    (["--roofline-dtype", "bfloat16"], "--roofline-dtype goes with --roofline"),
    (["--generate", "0"], "--generate 0 must be at least 1"),
    (["--generate", "2", "--train"], "--generate does not go with --train"),
    (["--generate", "2", "--input-size", "2,3"], "--generate takes one --input-size"),
    (["--full-logits"], "--full-logits goes with --generate"),
    (["--columns", "layer,bound"], "needs a device"),
])
def test_serving_flags_refuse_bad_input(in_workdir, capsys, extra, message):
    code, out, err = cli([*NET, *extra], capsys)
    assert code == 2 and message in err, err
