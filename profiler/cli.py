"""``python -m profiler`` / ``hookprof``: profile a model from the shell."""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from profiler import __version__
from profiler.api import profile
from profiler.generation import profile_generation
from profiler.render import (
    COLUMNS, DEFAULT_COLUMNS, MAX_AUTO_ROWS, MAX_WIDTH, ROOFLINE_COLUMNS, SORT_KEYS, TRAINING_COLUMNS,
    TRAINING_ROOFLINE_COLUMNS, TableOptions,
)
from profiler.roofline import DEVICES, lookup_device
from profiler.training import OPTIMIZERS, profile_training, training_summary
from profiler.units import UNITS

__all__ = ["main", "build_parser", "load_object"]

FORMATS = ("text", "github", "json", "csv", "markdown", "html")

EXAMPLES = """\
examples:
  python -m profiler torchvision.models:resnet50 --input-size 1,3,224,224 --depth 2
  python -m profiler transformers:GPT2LMHeadModel --config transformers:GPT2Config n_layer=2 \\
      --input-size 1,128 --input-dtype long
  python -m profiler torchvision.models:resnet18 --input-size 1,3,224,224 --sort macs --top 10
  python -m profiler torchvision.models:vgg11 --arg num_classes=10 --input-size 1,3,64,64 --format json
  python -m profiler examples/my_models.py:Net --arg width=64 --input-size 8,32 --input-size 8,4 \\
      --measure-time --vs-thop
  python -m profiler examples/my_models.py:Net --input-size 8,32 --input-size 8,4 --train --optimizer adam
  python -m profiler transformers:LlamaForCausalLM --config transformers:LlamaConfig num_hidden_layers=2 \
      hidden_size=256 intermediate_size=512 --input-size 1,32 --generate 16 --roofline H100-SXM5
"""


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hookprof",
        description="Count the MACs, FLOPs and parameters of a PyTorch model, layer by layer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("model", help="MODULE:ATTR naming a model class, a builder function or a module "
                        "instance, e.g. torchvision.models:resnet50; MODULE may be a path to a .py file")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument for the model's constructor, e.g. --arg num_classes=10 (repeatable)")
    parser.add_argument("--config", nargs="+", metavar=("SPEC", "KEY=VALUE"),
                        help="build the model from a config: a MODULE:ATTR config class and its overrides, "
                        "e.g. --config transformers:GPT2Config n_layer=2 n_embd=128")
    parser.add_argument("--input-size", action="append", required=True, metavar="D1,D2,...",
                        help="size of a random input, e.g. 1,3,224,224; repeat for several inputs")
    parser.add_argument("--input-dtype", metavar="DTYPE",
                        help="dtype of the inputs, e.g. long for token ids (default: the model's float dtype)")
    parser.add_argument("--device", default="cpu",
                        help="where to build and run the model: cpu, cuda, cuda:1, or meta (shapes only, no memory)")
    parser.add_argument("--depth", type=int, help="deepest level of the layer tree to show (default: the deepest "
                        f"that fits {MAX_AUTO_ROWS} rows and {MAX_WIDTH} columns)")
    parser.add_argument("--columns", help=f"comma-separated columns, from: {', '.join(COLUMNS)}")
    parser.add_argument("--sort", choices=SORT_KEYS, help="rank layers by their own work in a flat list")
    parser.add_argument("--top", type=int, help="keep the first N rows, e.g. --sort macs --top 10")
    parser.add_argument("--units", choices=UNITS, default="human", help="human (1.23M) or exact (1,234,567)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--measure-time", action="store_true", help="also time every layer (median of --repeats)")
    parser.add_argument("--repeats", type=int, help="timed forward passes for --measure-time (default 5)")
    parser.add_argument("--vs-thop", action="store_true",
                        help="also compare every layer with thop (needs thop; not with --format csv)")
    parser.add_argument("--train", action="store_true",
                        help="count a training step: forward, the sum of the outputs as the loss, and backward; "
                        "adds backward FLOPs, activation bytes and the step's memory")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="with --train: size the optimizer state in the memory line (default: none)")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="profile greedy generation of N tokens after a prompt of token ids of --input-size "
                        "(batch,tokens): the prefill, then each decode step with a KV cache (csv: the decode "
                        "steps' layers)")
    parser.add_argument("--full-logits", action="store_true",
                        help="with --generate: the prefill computes the logits of every prompt position, as a plain "
                        "call of the model does (default: the last one's, as generate does)")
    parser.add_argument("--roofline", metavar="DEVICE",
                        help=f"estimate each layer's time on DEVICE by the roofline model: {', '.join(DEVICES)}")
    parser.add_argument("--roofline-dtype", metavar="DTYPE",
                        help="with --roofline: the dtype whose peak FLOP/s to use, e.g. bfloat16, tf32 "
                        "(default: the model's)")
    return parser


def _load_file(path: Path) -> ModuleType:
    """Import a ``.py`` file once, registered in ``sys.modules`` like any module."""
    name = f"_hookprof_model_{abs(hash(str(path.resolve())))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_object(spec: str) -> Any:
    """``package.module:attr.sub`` or ``path/to/file.py:attr``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not MODULE:ATTR (e.g. torchvision.models:resnet50)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"no such file: {module_name}")
            module = _load_file(path)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except SystemExit as exc:
        raise UsageError(f"importing {module_name} called sys.exit({exc.code!r})") from exc
    obj, owner = module, module_name
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            raise UsageError(f"{owner!r} has no attribute {part!r}{_suggestion(obj, part, last=i == len(parts) - 1)}")
        obj = getattr(obj, part)
        owner = f"{module_name}:{'.'.join(parts[:i + 1])}"
    return obj


def _suggestion(obj: Any, name: str, last: bool) -> str:
    """``"; did you mean 'resnet50'?"`` for the public attributes of ``obj`` closest to ``name``, or ``""``."""
    # A model or config is never a module, so the last name skips submodules ('resnet' for 'resnet5O');
    # getattr_static, because getattr would import every lazy submodule of a package like transformers.
    names = [n for n in dir(obj) if not n.startswith("_")
             and not (last and isinstance(inspect.getattr_static(obj, n, None), ModuleType))]
    close = [repr(n) for n in difflib.get_close_matches(name, names)]
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"; did you mean {listed}?"


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _keywords(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"{pair!r} is not KEY=VALUE")
        out[key] = _value(value)
    return out


def _size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise UsageError(f"--input-size {text!r} is not comma-separated integers, e.g. 1,3,224,224") from None
    if not size or any(d < 0 for d in size):
        raise UsageError(f"--input-size {text!r} must be non-negative integers")
    return size


def _dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    dtype = getattr(torch, text, None)
    if not isinstance(dtype, torch.dtype):
        raise UsageError(f"--input-dtype {text!r} is not a torch dtype (e.g. float32, long, int64, bfloat16)")
    return dtype


def build_model(args: argparse.Namespace) -> nn.Module:
    factory = load_object(args.model)
    kwargs = _keywords(args.arg)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from exc
    with device:
        if isinstance(factory, nn.Module):
            if args.config or args.arg:
                raise UsageError(f"{args.model!r} is a module instance: --config and --arg do not apply")
            model = factory.to(device)
        elif args.config:
            config = load_object(args.config[0])(**_keywords(args.config[1:]))
            model = factory(config, **kwargs)
        elif callable(factory):
            model = factory(**kwargs)
        else:
            raise UsageError(f"{args.model!r} is neither a model class, a builder nor a module")
    if not isinstance(model, nn.Module):
        raise UsageError(f"{args.model!r} built a {type(model).__name__}, not an nn.Module")
    return model


def run(argv: Sequence[str] | None = None) -> str:
    """The output for ``argv``; raises :class:`UsageError` for bad input."""
    args = build_parser().parse_args(argv)
    sizes = [_size(s) for s in args.input_size]
    dtype = _dtype(args.input_dtype)
    if args.repeats is not None and not args.measure_time:
        raise UsageError("--repeats goes with --measure-time")
    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats} must be at least 1")
    timing = {} if args.repeats is None else {"repeats": args.repeats}
    columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    table_flags = [flag for flag, value in (("--depth", args.depth), ("--columns", args.columns), ("--sort", args.sort),
                                            ("--top", args.top)) if value is not None]
    if args.optimizer is not None and not args.train:
        raise UsageError("--optimizer goes with --train")
    if args.train and (args.measure_time or args.vs_thop):
        raise UsageError(f"--train does not go with {'--measure-time' if args.measure_time else '--vs-thop'}")
    if args.generate is not None:
        clash = [flag for flag, on in (("--train", args.train), ("--measure-time", args.measure_time),
                                       ("--vs-thop", args.vs_thop)) if on]
        if clash:
            raise UsageError(f"--generate does not go with {clash[0]}")
        if args.generate < 1:
            raise UsageError(f"--generate {args.generate} must be at least 1")
        if len(sizes) != 1 or len(sizes[0]) != 2:
            raise UsageError("--generate takes one --input-size, the prompt's batch,tokens (e.g. 1,32)")
    if args.full_logits and args.generate is None:
        raise UsageError("--full-logits goes with --generate")
    if args.roofline_dtype is not None and args.roofline is None:
        raise UsageError("--roofline-dtype goes with --roofline")
    if args.roofline is not None:
        try:
            device = lookup_device(args.roofline)
            if args.roofline_dtype is not None:
                device.peak(args.roofline_dtype)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if args.roofline is not None:  # the columns the result's table shows by default
        default = TRAINING_ROOFLINE_COLUMNS if args.train else ROOFLINE_COLUMNS
    else:
        default = TRAINING_COLUMNS if args.train else DEFAULT_COLUMNS
    options = TableOptions(args.depth, columns or default, args.sort, args.top, args.units)
    try:
        options.validate(timed=True, training=args.train, roofline=args.roofline is not None)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.format in ("json", "csv") and table_flags:
        raise UsageError(f"{', '.join(table_flags)} shape tables; --format {args.format} exports every layer")
    if args.format == "csv" and args.vs_thop:
        raise UsageError("--vs-thop does not fit in --format csv; use text, github, markdown, html or json")
    try:
        model = build_model(args)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"building {args.model} failed: {type(exc).__name__}: {exc}") from exc
    input_size = sizes if len(sizes) > 1 else sizes[0]
    try:
        if args.generate is not None:
            return _generation(model, args, sizes[0], dtype, table_options=dict(
                columns=columns, sort_by=args.sort, top=args.top, units=args.units))
        if args.train:
            result = profile_training(model, input_size=input_size, input_dtype=dtype, optimizer=args.optimizer)
        else:
            result = profile(model, input_size=input_size, input_dtype=dtype, measure_time=args.measure_time, **timing)
        if args.roofline is not None:
            result = result.roofline(args.roofline, args.roofline_dtype)
        table_options = dict(columns=columns, sort_by=args.sort, top=args.top, units=args.units)
        if args.format == "json":
            data = result.to_dict()
            if args.vs_thop:
                data["thop"] = _comparison_dict(model, input_size, dtype)
            return json.dumps(data, indent=2)
        if args.format == "csv":
            return result.to_csv()
        if args.format == "html":
            text = result.html(args.depth, **table_options)
            if args.vs_thop:
                text += "\n" + _comparison(model, input_size, dtype).table(tablefmt="html")
            return text
        tablefmt = {"text": "simple", "markdown": "github"}.get(args.format, args.format)
        text = result.table(args.depth, tablefmt=tablefmt, **table_options)
        if args.train:
            text += "\n\n" + training_summary(result, args.units)
        if args.vs_thop:
            text += "\n\n" + _comparison(model, input_size, dtype).table(tablefmt=tablefmt)
        return text
    except (TypeError, ValueError, RuntimeError, ImportError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc


def _generation(model: nn.Module, args: argparse.Namespace, size: tuple[int, ...], dtype: torch.dtype | None,
                table_options: dict) -> str:
    """``--generate N``: the phase table, then the decode steps' layer table (with ``--roofline``,
    estimated times in both)."""
    device = next((p.device for p in model.parameters()), torch.device(args.device))
    prompt = torch.zeros(size, dtype=dtype or torch.long, device=device)
    result = profile_generation(model, prompt, max_new_tokens=args.generate, full_logits=args.full_logits)
    if args.format == "json":
        report = result if args.roofline is None else result.roofline(args.roofline, args.roofline_dtype)
        return json.dumps(report.to_dict(), indent=2)
    layers = result.decode or result.prefill
    if args.roofline is not None:
        roofline = result.roofline(args.roofline, args.roofline_dtype)
        phases, layers = roofline, roofline.decode or roofline.prefill
    else:
        phases = result
    if args.format == "csv":
        return layers.to_csv()
    if args.format == "html":
        return phases.table(units=args.units, tablefmt="html") + "\n" + layers.html(args.depth, **table_options)
    tablefmt = {"text": "simple", "markdown": "github"}.get(args.format, args.format)
    title = "Decode steps, by layer:" if result.decode is not None else "Prefill, by layer:"
    return (phases.table(units=args.units, tablefmt=tablefmt) + f"\n\n{title}\n"
            + layers.table(args.depth, tablefmt=tablefmt, **table_options))


def _comparison(model: nn.Module, input_size, dtype):
    from profiler.compare import compare_with_thop

    return compare_with_thop(model, input_size=input_size, input_dtype=dtype)


def _comparison_dict(model: nn.Module, input_size, dtype) -> dict[str, Any]:
    comparison = _comparison(model, input_size, dtype)
    return {
        "macs": comparison.thop_macs,
        "params": comparison.thop_params,
        "differences": [
            {"name": r.name, "type": r.type, "macs": r.ours, "thop_macs": r.thop, "reason": r.reason}
            for r in comparison.differences
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        print(run(argv))
        sys.stdout.flush()
    except UsageError as exc:
        print(f"hookprof: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (``| head``). Point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
