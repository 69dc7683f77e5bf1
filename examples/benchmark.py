"""How much a profiling call costs over a plain forward, side by side with thop and FlopCounterMode.

For each model of a zoo (torchvision CNNs and ViT/Swin, nn.Transformer, LSTM/GRU, GPT-2, BERT,
LLaMA, T5...), in one process and interleaved after a warm-up, it times the median of several runs
of: a plain ``torch.no_grad()`` forward, ``profiler.profile``, ``thop.profile`` and
``FlopCounterMode`` (each sample repeats a call until it lasts about 20 ms); it prints each tool's
cost as a ratio to the plain forward, their geometric means and worst models, and writes the table
as JSON.

``added`` is what a ``profile`` call adds to the forward, in milliseconds. ``hooks`` is the part a
capture without the function mode adds (module hooks, records, rules, the walk over the model) and
``mode`` the rest: the function mode, and building the result. ``dispatch`` is the part of
``hooks`` that torch's dispatch to two global hooks that do nothing costs: the floor for any
forward-hook profiler. ``modules`` and ``functions`` count the module calls and torch function
calls per forward, which is what the parts pay for. The parts are differences of medians: on a
noisy machine a small one can come out below zero, and is shown as ``~0`` (the JSON keeps it).

``--train`` times one training step instead: a plain one (``model.train()``, a forward, the loss
``profile_training`` takes by default, ``.backward()``, ``zero_grad``), ``profile_training`` and
``FlopCounterMode`` around the plain step, as ratios to the plain step. ``exact`` says whether
``profile_training``'s forward and backward matmul FLOPs equal FlopCounterMode's total; where the
step ran a fused CPU kernel FlopCounterMode has no formula for (SDPA's flash kernel, mkldnn's LSTM),
FlopCounterMode counts 0 for it and the check is ``n/a (fused kernel)``; where the model has grouped
convolutions, whose weight gradients FlopCounterMode counts once per group, ``n/a (grouped conv)``.
A model that cannot train (no floating-point output that requires grad) is skipped, with the reason.
``--meta-llama`` adds a LLaMA-70B-shaped step on the meta device, plain and under ``profile_training``.

``--generate`` times generating 32 tokens after a 64-token prompt instead: a plain greedy loop
(the prompt's forward, then one forward of the last token a step with a ``DynamicCache``, under
``torch.no_grad()``), Hugging Face's ``generate`` of the same tokens, and ``profile_generation``,
as ratios to the plain loop (target: at most 1.3x).

    python examples/benchmark.py             # the whole zoo, one torch thread
    python examples/benchmark.py --quick     # a smaller zoo and fewer runs (under 2 minutes)
    python examples/benchmark.py --scale     # 1,000 and 10,000 small modules; 100 calls of one shared cell
    python examples/benchmark.py --train     # one training step; with --quick or --models too
    python examples/benchmark.py --train --models seed_transformer --meta-llama   # and LLaMA-70B on meta
    python examples/benchmark.py --generate  # 32 tokens of GPT-2 small and a LLaMA shape with GQA
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from hooks import REGISTRY, capture_forward
from profiler import profile, profile_generation, profile_training
from profiler.training import default_loss


class Call(nn.Module):
    """Calls ``model`` with keyword arguments, so that every tool can pass positional inputs."""

    def __init__(self, model: nn.Module, *names: str) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)))


class LSTMModel(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], layers: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        self.rnn = cell(128, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1000)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])


def _vision(name: str, size: int = 224) -> Callable[[], tuple[nn.Module, tuple]]:
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None), (torch.rand(1, 3, size, size),)

    return build


def _hf(model_class: str, config_class: str, tokens: int = 128, decoder: bool = False, **config):
    def build():
        import transformers

        cfg = getattr(transformers, config_class)(**config)
        model = getattr(transformers, model_class)(cfg)
        ids = torch.zeros(1, tokens, dtype=torch.long)
        if decoder:
            return Call(model, "input_ids", "decoder_input_ids"), (ids, ids)
        return Call(model, "input_ids"), (ids,)

    return build


class Loop(nn.Module):
    """``steps`` calls of one shared cell, as a recurrent model unrolls it."""

    def __init__(self, cell: nn.Module, steps: int = 100) -> None:
        super().__init__()
        self.cell = cell
        self.steps = steps

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for _ in range(self.steps):
            h = self.cell(x, h)
        return h


def _chain(width: int, rows: int, n: int = 10_000) -> Callable[[], tuple[nn.Module, tuple]]:
    return lambda: (nn.Sequential(*(nn.Linear(width, width) for _ in range(n))), (torch.rand(rows, width),))


def _loop(width: int, rows: int) -> Callable[[], tuple[nn.Module, tuple]]:
    return lambda: (Loop(nn.GRUCell(width, width)), (torch.rand(rows, width),))


def _seed():
    sys.path.insert(0, __file__.rpartition("/")[0] or ".")
    from transformer_flops import seed_model

    model, x = seed_model()
    return model, (x,)


ZOO: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "resnet18": _vision("resnet18"),
    "resnet50": _vision("resnet50"),
    "mobilenet_v2": _vision("mobilenet_v2"),
    "mobilenet_v3_large": _vision("mobilenet_v3_large"),
    "efficientnet_b0": _vision("efficientnet_b0"),
    "densenet121": _vision("densenet121"),
    "vgg11_bn": _vision("vgg11_bn"),
    "squeezenet1_0": _vision("squeezenet1_0"),
    "shufflenet_v2_x1_0": _vision("shufflenet_v2_x1_0"),
    "regnet_y_400mf": _vision("regnet_y_400mf"),
    "convnext_tiny": _vision("convnext_tiny"),
    "vit_b_16": _vision("vit_b_16"),
    "swin_t": _vision("swin_t"),
    "seed_transformer": _seed,
    "nn_transformer": lambda: (nn.Transformer(256, 8, 2, 2, 1024), (torch.rand(64, 4, 256), torch.rand(32, 4, 256))),
    "transformer_encoder": lambda: (nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 8, 1024), 4),
                                    (torch.rand(64, 4, 256),)),
    "lstm": lambda: (LSTMModel(nn.LSTM), (torch.zeros(4, 64, dtype=torch.long),)),
    "gru": lambda: (LSTMModel(nn.GRU), (torch.zeros(4, 64, dtype=torch.long),)),
    "small_lstm": lambda: (nn.LSTM(32, 64), (torch.rand(16, 2, 32),)),
    "gpt2": _hf("GPT2LMHeadModel", "GPT2Config", n_layer=4, n_embd=256, n_head=4),
    "bert": _hf("BertModel", "BertConfig", num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                intermediate_size=1024),
    "llama": _hf("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                 num_key_value_heads=2, intermediate_size=704, vocab_size=32000),
    "t5": _hf("T5ForConditionalGeneration", "T5Config", decoder=True, num_layers=2, d_model=256, num_heads=4,
              d_ff=1024, d_kv=64),
    "vit_hf": lambda: _vit_hf(),
    "distilbert": _hf("DistilBertModel", "DistilBertConfig", n_layers=3, dim=256, n_heads=4, hidden_dim=1024),
}
SCALE: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "chain_1k_linear64x8": _chain(64, 8, n=1_000),
    "chain_10k_linear64x8": _chain(64, 8),
    "chain_10k_linear128x32": _chain(128, 32),
    "chain_10k_linear256x32": _chain(256, 32),
    "loop_100_grucell64x8": _loop(64, 8),
    "loop_100_grucell256x32": _loop(256, 32),
}
"""How the cost scales with the number of module calls: 1,000 and 10,000 modules, or 100 calls of one."""
QUICK = ("resnet18", "mobilenet_v3_large", "seed_transformer", "transformer_encoder", "small_lstm", "gpt2", "llama")


def _vit_hf():
    import transformers

    cfg = transformers.ViTConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    return transformers.ViTModel(cfg), (torch.rand(1, 3, 224, 224),)


def _plain(model, args):
    with torch.no_grad():
        model(*args)


def _ours(model, args):
    profile(model, args)


def _thop(model, args):
    import thop

    thop.profile(model, inputs=args, verbose=False)


def _flop_counter(model, args):
    with torch.no_grad(), FlopCounterMode(display=False):
        model(*args)


def _hooks_only(model, args):
    """hookprof's capture without its function mode: what the module hooks cost on their own."""
    capture_forward(model, lambda: model(*args), REGISTRY.resolver({}), functions=False)


def _dispatch_only(model, args):
    """A plain forward with two global module hooks that do nothing: torch's share of the hooks' cost."""
    handles = [nn.modules.module.register_module_forward_pre_hook(lambda module, inputs: None),
               nn.modules.module.register_module_forward_hook(lambda module, inputs, output: None)]
    try:
        _plain(model, args)
    finally:
        for handle in handles:
            handle.remove()


TOOLS = {"plain": _plain, "hookprof": _ours, "thop": _thop, "FlopCounterMode": _flop_counter}
PARTS = {"dispatch": _dispatch_only, "hooks": _hooks_only}  # shown as milliseconds added, not ratios


class _CountFunctions(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def call_counts(model: nn.Module, args: tuple) -> tuple[int, int]:
    """(module calls, torch function calls) in one forward."""
    modules = [0]
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, a: modules.__setitem__(0, modules[0] + 1))
    try:
        with torch.no_grad(), _CountFunctions() as functions:
            model(*args)
    finally:
        handle.remove()
    return modules[0], functions.calls


def interleaved_medians(tools: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Seconds per call of each tool: after ``warmup`` rounds, ``repeats`` rounds of every tool in
    turn, the median of each. A sample times enough calls to last about 20 ms (measured on the
    first tool, the plain baseline), so sub-millisecond models are not timer noise."""
    for _ in range(warmup):
        for fn in tools.values():
            fn()
    baseline = next(iter(tools.values()))
    start = time.perf_counter()
    baseline()
    number = max(1, math.ceil(0.02 / (time.perf_counter() - start)))
    runs: dict[str, list[float]] = {tool: [] for tool in tools}
    for _ in range(repeats):
        for tool, fn in tools.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            runs[tool].append((time.perf_counter() - start) / number)
    return {tool: statistics.median(times) for tool, times in runs.items()}


def measure(name: str, repeats: int, warmup: int) -> dict:
    model, args = {**ZOO, **SCALE}[name]()
    model.eval()
    thop_model = copy.deepcopy(model)  # thop leaves one hook per shared module behind
    tools = {tool: (lambda fn=fn, m=thop_model if tool == "thop" else model: fn(m, args))
             for tool, fn in {**TOOLS, **PARTS}.items()}
    medians = interleaved_medians(tools, repeats, warmup)
    module_calls, function_calls = call_counts(model, args)
    plain = medians["plain"]
    return {
        "model": name,
        "plain_ms": 1e3 * plain,
        "ratios": {tool: medians[tool] / plain for tool in TOOLS if tool != "plain"},
        "added_ms": 1e3 * (medians["hookprof"] - plain),
        "dispatch_ms": 1e3 * (medians["dispatch"] - plain),
        "hooks_ms": 1e3 * (medians["hooks"] - plain),
        "mode_ms": 1e3 * (medians["hookprof"] - medians["hooks"]),
        "module_calls": module_calls,
        "function_calls": function_calls,
    }


WIDTH = 100
"""Characters per printed line."""


def format_ms(ms: float) -> str:
    """Milliseconds added; a part measured below zero is a difference of two medians lost in the
    noise, not a negative cost: "~0"."""
    return f"{ms:.2f}ms" if ms >= 0 else "~0"


def _table(header: list[str], rows: list[list[str]], footer: list[list[str]] = ()) -> list[str]:
    """Columns as wide as their longest cell (full model names), the first left-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, *footer)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *map(line, rows)] + ([rule, *map(line, footer)] if footer else [])


def worst_line(rows: list[dict], tools: list[str]) -> str:
    """Each tool's highest ratio and the model, named in full, it was measured on."""
    worst = {t: max(rows, key=lambda r: r["ratios"][t]) for t in tools}
    parts = [f"{t} {worst[t]['ratios'][t]:.2f}x on {worst[t]['model']}" for t in tools]
    line = "worst: " + "; ".join(parts)
    return line if len(line) <= WIDTH else "worst: " + ("\n" + " " * len("worst: ")).join(parts)


def report(rows: list[dict]) -> str:
    """Two tables within ``WIDTH`` columns: each tool's cost as a ratio, then what ``profile`` adds."""
    tools = [t for t in TOOLS if t != "plain"]
    geo = {t: math.exp(statistics.fmean(math.log(r["ratios"][t]) for r in rows)) for t in tools}
    ratios = [[r["model"], f"{r['plain_ms']:.1f}ms", *(f"{r['ratios'][t]:.2f}x" for t in tools)] for r in rows]
    lines = _table(["model", "forward", *tools], ratios, [["geometric mean", "", *(f"{geo[t]:.2f}x" for t in tools)]])
    lines += [worst_line(rows, tools), ""]
    parts = ("added_ms", "dispatch_ms", "hooks_ms", "mode_ms")
    added = [[r["model"], *(format_ms(r[p]) for p in parts), str(r["module_calls"]), str(r["function_calls"])]
             for r in rows]
    lines += _table(["model", "added", "dispatch", "hooks", "mode", "modules", "functions"], added)
    if any(r[p] < 0 for r in rows for p in parts):
        lines.append("~0: measured below zero, a difference of medians within the timing noise")
    return "\n".join(lines)


def _step(model, args):
    """One plain training step, with the loss ``profile_training`` takes by default."""
    model.train()
    default_loss(model(*args)).backward()
    model.zero_grad(set_to_none=True)


def _ours_training(model, args):
    profile_training(model, args)


def _flop_counter_step(model, args):
    with FlopCounterMode(display=False):
        _step(model, args)


TRAINING_TOOLS = {"plain": _step, "profile_training": _ours_training, "FlopCounterMode": _flop_counter_step}
FUSED_KERNELS = ("aten._scaled_dot_product_flash_attention_for_cpu",
                 "aten._scaled_dot_product_flash_attention_for_cpu_backward",
                 "aten.mkldnn_rnn_layer", "aten.mkldnn_rnn_layer_backward")
"""CPU kernels FlopCounterMode has no formula for, so counts as 0: SDPA's flash kernel and mkldnn's LSTM."""


class _Kernels(TorchDispatchMode):
    """The aten operators a call runs, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def fused_kernels(model: nn.Module, args: tuple) -> list[str]:
    """The kernels of :data:`FUSED_KERNELS` that one plain training step runs, unless FlopCounterMode
    has come to count them."""
    counted = {str(op) for op in FlopCounterMode(display=False).flop_registry}
    with _Kernels() as kernels:
        _step(model, args)
    return sorted(kernels.names.intersection(FUSED_KERNELS) - counted)


def measure_training(name: str, repeats: int, warmup: int) -> dict:
    """One training step of a zoo model timed plain, under ``profile_training`` and under
    FlopCounterMode; or, for a model that cannot train, the reason it was skipped."""
    model, args = {**ZOO, **SCALE}[name]()
    try:
        _step(model, args)
    except Exception as exc:  # no loss to differentiate, or a forward that refuses training mode
        return {"model": name, "skipped": f"{type(exc).__name__}: {exc}"}
    medians = interleaved_medians({tool: (lambda fn=fn: fn(model, args)) for tool, fn in TRAINING_TOOLS.items()},
                                  repeats, warmup)
    result = profile_training(model, args)
    with FlopCounterMode(display=False) as counter:
        _step(model, args)
    ours, theirs = result.matmul_flops + result.backward_matmul_flops, counter.get_total_flops()
    fused = fused_kernels(model, args)
    grouped = any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules())
    plain = medians["plain"]
    return {
        "model": name,
        "step_ms": 1e3 * plain,
        "ratios": {tool: medians[tool] / plain for tool in TRAINING_TOOLS if tool != "plain"},
        "added_ms": 1e3 * (medians["profile_training"] - plain),
        "hookprof_matmul_flops": ours,
        "flop_counter_flops": theirs,
        "fused_kernels": fused,
        "grouped_convs": grouped,
        # None: FlopCounterMode is no reference (it counts the fused kernels as 0, grouped weight gradients groups times)
        "exact": ours == theirs if not (fused or grouped) else None,
    }


TRAINING_TARGET = "target: geometric mean at most 1.3x a plain step, and below FlopCounterMode on every model"


def exact_cell(row: dict) -> str:
    """``yes``/``no``, or ``n/a (...)`` where FlopCounterMode is no reference."""
    if row["exact"] is None:
        return "n/a (fused kernel)" if row["fused_kernels"] else "n/a (grouped conv)"
    return "yes" if row["exact"] else "no"


def training_report(rows: list[dict]) -> str:
    """Each tool's cost over a plain training step, whether the counts agree, and the models skipped."""
    tools = [t for t in TRAINING_TOOLS if t != "plain"]
    timed = [r for r in rows if "skipped" not in r]
    lines = []
    if timed:
        geo = {t: math.exp(statistics.fmean(math.log(r["ratios"][t]) for r in timed)) for t in tools}
        table = [[r["model"], f"{r['step_ms']:.1f}ms", *(f"{r['ratios'][t]:.2f}x" for t in tools),
                  format_ms(r["added_ms"]), exact_cell(r)] for r in timed]
        lines += _table(["model", "step", *tools, "added", "exact"], table,
                        [["geometric mean", "", *(f"{geo[t]:.2f}x" for t in tools), "", ""]])
        lines.append(worst_line(timed, tools))
        above = [r["model"] for r in timed if r["ratios"]["profile_training"] >= r["ratios"]["FlopCounterMode"]]
        lines.append(textwrap.fill("profile_training at or above FlopCounterMode on: " + ", ".join(above), WIDTH,
                                   subsequent_indent="  ") if above
                     else "profile_training below FlopCounterMode on every model")
        if any(r["added_ms"] < 0 for r in timed):
            lines.append("~0: measured below zero, a difference of medians within the timing noise")
        fused = sorted({k for r in timed for k in r["fused_kernels"]})
        if fused:
            lines.append(textwrap.fill("n/a (fused kernel): FlopCounterMode counts 0 for " + ", ".join(fused),
                                       WIDTH, subsequent_indent="  "))
        if any(r["exact"] is None and not r["fused_kernels"] for r in timed):
            lines.append(textwrap.fill("n/a (grouped conv): FlopCounterMode's convolution_backward formula counts "
                                       "a grouped convolution's weight gradient once per group (for a depthwise "
                                       "convolution over C channels, C times its forward); hookprof counts it once",
                                       WIDTH, subsequent_indent="  "))
    lines += [textwrap.fill(f"skipped {r['model']}: {r['skipped']}", WIDTH, subsequent_indent="  ")
              for r in rows if "skipped" in r]
    lines.append(TRAINING_TARGET)
    return "\n".join(lines)


def measure_meta_llama(repeats: int) -> dict:
    """A LLaMA-70B-shaped training step (4096 tokens, bfloat16) on the meta device, plain and under
    ``profile_training``: what counting a step costs when no arithmetic runs."""
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llm_on_meta import llama_70b_config

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(llama_70b_config()).to(torch.bfloat16)
    ids = torch.zeros(1, 4096, dtype=torch.long, device="meta")

    def plain():
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    def ours():
        profile_training(model, kwargs={"input_ids": ids, "labels": ids})

    medians = interleaved_medians({"plain": plain, "profile_training": ours}, repeats, warmup=1)
    return {"plain_s": medians["plain"], "profile_training_s": medians["profile_training"],
            "ratio": medians["profile_training"] / medians["plain"]}


def meta_llama_line(row: dict) -> str:
    return (f"LLaMA-70B shape, 4096 tokens, bfloat16, meta device: plain step {row['plain_s']:.2f} s, "
            f"profile_training {row['profile_training_s']:.2f} s ({row['ratio']:.2f}x; target at most 1.3x)")


def _generation_models() -> dict[str, Callable[[], nn.Module]]:
    """GPT-2 small's shape (124M parameters) and a LLaMA shape of 8 layers with grouped-query
    attention (16 query heads, 4 key/value heads; 156M): random weights, eager attention."""
    import transformers

    def gpt2():
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(attn_implementation="eager")).eval()

    def llama():
        config = transformers.LlamaConfig(
            hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
            num_key_value_heads=4, vocab_size=32000, attn_implementation="eager")
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config).eval()

    return {"gpt2": gpt2, "llama_gqa": llama}


GENERATED_TOKENS = 32
PROMPT_TOKENS = 64


def measure_generation(name: str, repeats: int) -> dict:
    """A plain greedy loop, ``generate`` and ``profile_generation`` of the same tokens, interleaved."""
    import transformers

    model = _generation_models()[name]()
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def plain():
        cache = transformers.DynamicCache(config=model.config)
        ids, tokens = prompt, []
        for _ in range(GENERATED_TOKENS):
            ids = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            tokens.append(ids)
        return torch.cat(tokens, dim=1)

    def generate():
        return model.generate(prompt, do_sample=False, max_new_tokens=GENERATED_TOKENS, eos_token_id=None,
                              pad_token_id=0)[:, PROMPT_TOKENS:]

    def ours():
        return profile_generation(model, prompt, max_new_tokens=GENERATED_TOKENS).tokens

    same = torch.equal(plain(), ours()) and torch.equal(generate(), ours())
    medians = interleaved_medians({"plain": plain, "generate": generate, "profile_generation": ours}, repeats, warmup=1)
    return {"model": name, "plain_ms": 1e3 * medians["plain"], "same_tokens": same,
            "ratios": {tool: medians[tool] / medians["plain"] for tool in ("generate", "profile_generation")}}


def generation_report(rows: list[dict]) -> str:
    header = ["model", "greedy loop", "generate", "profile_generation", "same tokens"]
    body = [[r["model"], f"{r['plain_ms']:.1f}ms", f"{r['ratios']['generate']:.2f}x",
             f"{r['ratios']['profile_generation']:.2f}x", "yes" if r["same_tokens"] else "NO"] for r in rows]
    return "\n".join(_table(header, body) + [
        f"{GENERATED_TOKENS} tokens after a {PROMPT_TOKENS}-token prompt, batch 1; target: profile_generation "
        "at most 1.3x the greedy loop"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 models, fewer runs: under 2 minutes")
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join([*ZOO, *SCALE]))
    parser.add_argument("--scale", action="store_true", help="the scaling models instead of the zoo: "
                        "1,000 and 10,000 small modules, 100 calls of one shared cell")
    parser.add_argument("--train", action="store_true", help="one training step: a plain one, profile_training "
                        "and FlopCounterMode, and whether their matmul FLOPs agree")
    parser.add_argument("--meta-llama", action="store_true", help="with --train: also a LLaMA-70B-shaped step "
                        "on the meta device (needs transformers)")
    parser.add_argument("--generate", action="store_true", help=f"generation of {GENERATED_TOKENS} tokens instead: "
                        "a greedy loop, generate() and profile_generation (needs transformers)")
    parser.add_argument("--repeats", type=int, help="timed runs per tool (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default="benchmark.json", help="where to write the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.models:
        names = args.models.split(",")
        unknown = [n for n in names if n not in ZOO and n not in SCALE]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join([*ZOO, *SCALE])}")
    else:
        names = list(SCALE if args.scale else QUICK if args.quick else ZOO)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.generate:
        rows = [measure_generation(name, repeats) for name in _generation_models()]
        print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
              f"torch {torch.__version__}\ncost = call / plain greedy loop (median of {repeats})")
        print(generation_report(rows))
        with open(args.json, "w") as f:
            json.dump({"generate": True, "repeats": repeats, "rows": rows}, f, indent=2)
        return
    rows = []
    for name in names:
        rows.append((measure_training if args.train else measure)(name, repeats, warmup=1))
        print(f"skipped {name}" if "skipped" in rows[-1] else f"measured {name}", file=sys.stderr)
    baseline = "plain training step" if args.train else "plain no-grad forward"
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}\ncost = profiling call / {baseline} (median of {repeats})")
    print(training_report(rows) if args.train else report(rows))
    results = {"train": args.train, "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}
    if args.train and args.meta_llama:
        results["meta_llama"] = measure_meta_llama(repeats)
        print(meta_llama_line(results["meta_llama"]))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
