"""The README is true: its outputs are what the code prints today, its signatures are the code's,
and its commands install what they need and run."""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torchvision
from packaging.requirements import Requirement

from profiler import ProfileResult, clever_format, compare_with_thop, profile, profile_generation, profile_training
from profiler.cli import build_parser, main
from profiler.render import MAX_AUTO_ROWS, MAX_WIDTH, TableOptions, notes

from conftest import EXAMPLES, flop_counter_flops, load_example

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()
PACKAGES = {path.parent.name for path in ROOT.glob("*/__init__.py")}  # what `pip install -e .` provides


def section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = README.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(r"\n(#+) ", README[start + 1:]) if len(m.group(1)) <= len(level)]
    return README[start:start + 1 + ends[0]] if ends else README[start:]


def fenced(text: str, lang: str = "") -> list[str]:
    """The ```-fenced blocks of ``text`` in the language ``lang`` ("" for plain blocks)."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a bash block as its words; ``\\`` continues a line, ``&&`` separates commands."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while "&&" in words:
            at = words.index("&&")
            commands.append(words[:at])
            words = words[at + 1:]
        if words:
            commands.append(words)
    return commands


def pip_requirements(words: list[str]) -> tuple[list[Requirement], list[str]]:
    """``pip install A==1 -e .`` -> the requirements and the editable targets."""
    assert words[:2] == ["pip", "install"], words
    rest = [w for w in words[2:] if w != "--quiet"]
    editable = [rest[i + 1] for i, w in enumerate(rest) if w == "-e"]
    named = [w for i, w in enumerate(rest) if w != "-e" and (i == 0 or rest[i - 1] != "-e")]
    return [Requirement(w) for w in named], editable


# ---------------------------------------------------------------- quick start


def quick_start_output() -> list[str]:
    """The block located as /work/shared/hooks/before-stop locates it."""
    match = re.search(r"## Quick start.*?```\n(hookprof:.*?)```", README, re.S)
    assert match, "no ```-fenced block starting with 'hookprof:' after '## Quick start'"
    return [line.rstrip() for line in match.group(1).splitlines()]


def quick_start_commands() -> tuple[list[list[str]], list[list[str]]]:
    """The quick start's command block and the test command's block, as commands."""
    install, tests = fenced(section("## Quick start"), "bash")[:2]
    return shell_commands(install), shell_commands(tests)


def test_quick_start_output_is_what_the_example_prints(capsys):
    load_example("transformer_flops").main()
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert quick_start_output() == printed


def test_quick_start_installs_what_the_example_imports():
    (install, run), _ = quick_start_commands()
    assert run == ["python", "examples/transformer_flops.py"]
    requirements, editable = pip_requirements(install)
    assert editable == ["."]
    source = ast.parse((ROOT / run[1]).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(source) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(source)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"} - PACKAGES
    # thop too: the example runs without it, but the README's output has thop's line
    assert {r.name for r in requirements} == third_party
    for requirement in requirements:  # the versions the README's output was printed with
        assert requirement.specifier.contains(version(requirement.name)), requirement


def test_test_command_is_one_line_and_ci_runs_it():
    (install, _), tests = quick_start_commands()
    assert len(tests) == 2 and tests[1] == ["python", "-m", "pytest", "-q"]
    requirements, editable = pip_requirements(tests[0])
    assert editable == [".[test]"]
    quick_pins = {r.name: str(r) for r in pip_requirements(install)[0]}
    assert all(quick_pins[r.name] == str(r) for r in requirements if r.name in quick_pins)  # the same torch
    for requirement in requirements:
        assert requirement.specifier.contains(version(requirement.name)), requirement
    ci = [["pip", *words[3:]] for words in shell_commands(CI) if words[:3] == ["python", "-m", "pip"]]
    assert [pip_requirements(words) for words in ci] == [pip_requirements(tests[0])]
    assert ["python", "-m", "pytest", "-q"] in shell_commands(CI)


# ---------------------------------------------------------------- API


def call_signature(function) -> str:
    """``name(a, b=None, *, c="x")`` as the README writes it: no annotations, double quotes."""
    parts, star = [], False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == "self":
            continue
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if parameter.kind is parameter.VAR_KEYWORD:
            parts.append(f"**{parameter.name}")
        elif parameter.default is parameter.empty:
            parts.append(parameter.name)
        else:
            parts.append(f"{parameter.name}={repr(parameter.default).replace(chr(39), chr(34))}")
    return f"{function.__name__}({', '.join(parts)})"


@pytest.mark.parametrize(("written", "function"), [
    ("`{}`", profile),
    ("`result.{}`", ProfileResult.table),
    ("`result.{}`", ProfileResult.html),
    ("`{}`", compare_with_thop),
    ("`{}`", profile_training),
    ("`{}`", profile_generation),
])
def test_signatures_are_the_codes(written, function):
    assert written.format(call_signature(function)) in README


def test_clever_format_comment_names_its_model():
    line = next(line for line in fenced(section("## API"), "python")[0].splitlines() if "clever_format([" in line)
    match = re.search(r'clever_format\(\[macs, params\], "([^"]+)"\)\s+# .*: (\(.*\)) for (\w+) at (\d+)x(\d+)$', line)
    assert match, line
    fmt, shown, name, height, width = match.groups()
    macs, params = profile(getattr(torchvision.models, name)(weights=None), input_size=(1, 3, int(height), int(width)))
    assert clever_format([macs, params], fmt) == ast.literal_eval(shown)


def test_depth_default_is_said_as_the_code_has_it():
    phrase = f"fits {MAX_AUTO_ROWS} rows and {MAX_WIDTH} columns"
    assert phrase in section("### Tables, the notebook view and exports")
    depth = next(a for a in build_parser()._actions if "--depth" in a.option_strings)
    assert phrase in depth.help


def test_ranking_note_is_quoted_as_printed():
    model, x = load_example("transformer_flops").seed_model()
    (note,) = notes(profile(model, (x,)).root, TableOptions(sort_by="macs"))
    assert f"`{note}`" in section("### Tables, the notebook view and exports")


def test_comparison_output_is_what_it_prints():
    (block,) = fenced(section("### Comparing with thop"))
    model, x = load_example("transformer_flops").seed_model()
    printed = compare_with_thop(model, inputs=(x,)).table()
    assert [line.rstrip() for line in block.splitlines()] == [line.rstrip() for line in printed.splitlines()]


def test_training_output_is_what_it_prints():
    (block,) = re.findall(r"^```\n(Layer .*?)^```", section("## What a training step costs"), re.S | re.M)
    model, x = load_example("transformer_flops").seed_model()
    step = profile_training(model, inputs=(x,), optimizer="adamw")
    printed = step.table() + "\n\n" + str(step.memory)
    assert [line.rstrip() for line in block.splitlines()] == [line.rstrip() for line in printed.splitlines()]


def test_serving_output_is_what_the_example_prints(capsys):
    phase, big = re.findall(r"^```\n((?:Phase|Layer) .*?)^```", section("## What serving costs"), re.S | re.M)
    load_example("llm_serving").main()
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]

    def lines(block: str) -> list[str]:
        return [line.rstrip() for line in block.splitlines()]

    assert printed[:len(lines(phase))] == lines(phase)
    assert printed[-len(lines(big)):] == lines(big)


# ---------------------------------------------------------------- command line


def cli_commands() -> list[list[str]]:
    (block,) = fenced(section("### Command line"), "bash")
    commands = shell_commands(block)
    assert all(words[:3] == ["python", "-m", "profiler"] for words in commands)
    return [words[3:] for words in commands]


def test_cli_flags_table_is_the_parsers():
    table = section("### Command line").split("| flag | meaning |")[1]
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", "\n".join(
        line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))))
    parsed = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert documented == parsed


@pytest.mark.parametrize("argv", cli_commands(), ids=lambda argv: argv[0])
def test_cli_examples_run(argv, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    assert main(argv) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert out and err == ""


def test_cli_example_model_file_counts_by_formula(capsys, monkeypatch):
    (argv,) = [argv for argv in cli_commands() if argv[0].startswith("examples/my_models.py:")]
    assert (ROOT / argv[0].split(":")[0]).parent == EXAMPLES
    monkeypatch.chdir(ROOT)
    assert main([*argv, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    width = ast.literal_eval(argv[argv.index("--arg") + 1].removeprefix("width="))
    sizes = [tuple(map(int, argv[i + 1].split(","))) for i, word in enumerate(argv) if word == "--input-size"]
    (b, features), (_, context) = sizes
    classes = inspect.signature(load_example("my_models").Net).parameters["classes"].default
    linears = b * (features * width + context * width + width * classes)  # body, context, head: out x in
    assert data["totals"]["macs"] == linears + b * width * width  # and h @ mix, which thop does not see
    assert data["thop"]["macs"] == linears
    assert data["totals"]["params"] == sum(p.numel() for p in load_example("my_models").Net(width=width).parameters())


# ---------------------------------------------------------------- meta


def test_meta_snippet_numbers():
    (snippet,) = [block for block in fenced(section("## Performance and scale"), "python") if "meta" in block]
    params = int(re.search(r"# ([\d,]+) parameters", snippet).group(1).replace(",", ""))
    matmul = int(re.search(r"# ([\d,]+) = FlopCounterMode's", snippet).group(1).replace(",", ""))
    tokens = int(re.search(r"torch\.zeros\(1, (\d+),", snippet).group(1))
    llm = load_example("llm_on_meta")
    with torch.device("meta"):
        model = llm.transformers.LlamaForCausalLM(llm.llama_70b_config())
    ids = {"input_ids": torch.zeros(1, tokens, dtype=torch.long, device="meta")}
    result = profile(model, kwargs=ids)
    assert (result.total_params, result.matmul_flops) == (params, matmul)
    assert flop_counter_flops(model, kwargs=ids) == matmul
