"""Smoke test of benchmarks/bench_vs_llava.py at the tiny preset (issue 7): it runs, writes the JSON keys and the
Markdown table, and the two models really share their weights (Parrot with the MoE bypassed is LLaVA).
No timing assertions: CI machines are noisy."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vs_llava.py"
REQUIRED_KEYS = (
    "prefill_ratio_b1",
    "prefill_ratio_b8",
    "decode_ratio",
    "train_step_ratio",
    "peak_memory_ratio",
    "moe_flop_share",
    "moe_matmul_efficiency",
    "moe_top1_time_ratio",
    "raw",
)


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_vs_llava", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_vs_llava", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def tiny_models(bench):
    return bench.build_models(bench.PRESETS["tiny"], "cpu", torch.float32, None)


def test_shared_weights_identical(tiny_models):
    parrot, llava = tiny_models["parrot"], tiny_models["llava"]
    parrot_state, llava_state = parrot.state_dict(), llava.state_dict()
    assert set(parrot_state) - set(llava_state) == {
        "model.moe.gate.weight",
        "model.moe.experts.gate_up_proj",
        "model.moe.experts.down_proj",
    }
    for key, value in llava_state.items():
        assert torch.equal(value, parrot_state[key]), key


def test_parrot_without_moe_is_llava(bench, tiny_models):
    preset = bench.PRESETS["tiny"]
    for batch in (1, 3):
        inputs = bench.make_inputs(preset, batch, "cpu", torch.float32)
        result = bench.check_identical_without_moe(tiny_models, inputs)
        assert result["max_abs_diff_use_moe_false"] == 0.0, result
        assert result["max_abs_diff_with_moe"] > 0.0, result  # the MoE does change the visual tokens


def test_tiny_preset_end_to_end(bench, tmp_path):
    out_json, out_md = tmp_path / "tiny.json", tmp_path / "tiny.md"
    bench.main(["--preset", "tiny", "--repeats", "1", "--json", str(out_json), "--markdown", str(out_md)])
    result = json.loads(out_json.read_text())
    for key in REQUIRED_KEYS:
        assert key in result, key
    for key in REQUIRED_KEYS[:-1]:
        if key == "peak_memory_ratio" and result[key] is None:  # tiny models: below the RSS resolution
            continue
        # Finite only: at the tiny preset a timing difference (decode) can come out <= 0 on a noisy machine.
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    raw = result["raw"]
    for key in ("prefill_b1", "prefill_b8", "train_step"):
        assert set(raw[key]["samples"]) == {"parrot", "llava"}
    new_tokens = bench.PRESETS["tiny"]["new_tokens"]
    assert raw["decode"]["parrot_generated_len"] == raw["prompt_length"] + new_tokens
    assert raw["decode"]["llava_generated_len"] == raw["prompt_length"] + new_tokens
    assert result["correctness"]["bitwise_equal_use_moe_false"] is True
    # The FLOP difference Parrot - LLaVA is the MoE's two expert matmuls plus its small router.
    preset = bench.PRESETS["tiny"]
    experts = bench.moe_dense_flops(
        8,
        raw["image_seq_length"],
        preset["text"]["hidden_size"],
        preset["moe_intermediate_size"],
        preset["num_experts"],
    )
    flops = result["flops"]
    assert experts <= flops["parrot_prefill_b8_flops"] - flops["llava_prefill_b8_flops"] <= experts * 1.10
    for key in ("prefill_b1", "prefill_b8", "train"):
        assert 0.0 < flops[f"moe_flop_share_{key}"] < 1.0
    assert set(result["targets"]) >= {
        "prefill_b1",
        "prefill_b8",
        "decode",
        "train_step",
        "moe_matmul_efficiency",
        "moe_top1_time_ratio",
    }
    table = out_md.read_text()
    assert "| prefill, batch 1 (s) |" in table and "| target |" in table


def test_cpu_lm_head_bench_proves_equality_then_times(tmp_path):
    pytest.importorskip("trl")
    spec = importlib.util.spec_from_file_location("bench_cpu_lm_head", BENCH.parent / "bench_cpu_lm_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "head.json"
    assert module.main(["--rounds", "2", "--batch-size", "4", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["equality"]["same_parameters_with_gradients"]
    assert result["equality"]["grad_relative_diff"] < 1e-4 and result["equality"]["log_probs_max_abs_diff"] < 1e-4
    assert result["labelled_tokens_per_batch_median"] < result["tokens_per_batch"]
    assert math.isfinite(result["step_time_ratio_trl_over_ours"])


def test_eval_bench_checks_equal_predictions_and_writes_ratios(tmp_path):
    """The sweep runs on the first --sweep_rows questions, the best batch on all of them once per round; every run's
    predictions are compared before any ratio is written."""
    spec = importlib.util.spec_from_file_location("bench_eval", BENCH.parent / "bench_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "eval.json"
    result = module.main(
        [
            "--preset",
            "tiny",
            "--rows",
            "6",
            "--sweep_rows",
            "4",
            "--rounds",
            "2",
            "--batch_sizes",
            "1,3",
            "--max_new_tokens",
            "3",
            "--threads",
            "1",
            "--no_two_processes",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["sweep"]["rows"] == 4 and set(result["sweep"]["questions_per_second"]) == {"hf_b1", "hf_b3"}
    assert result["sweep"]["predictions_equal_hf_b1"] == {"hf_b1": True, "hf_b3": True}
    best = result["hf_best"]
    assert best in ("hf_b1", "hf_b3") and result["predictions_equal_hf_best"] == {best: True}
    assert len(result["seconds_per_round"][best]) == 2 and result["ratios_over_hf_best"] == {}
    compute = result["compute"]  # the share of the machine's matmul rate each configuration uses
    assert compute["flops_per_question"] > 0 and compute["matmul"]["flops_per_s"] > 0
    assert compute["ceiling_over_hf_best"] == pytest.approx(1 / compute["share_of_matmul_rate"][best])


def test_quantization_bench_proves_routing_then_times(tmp_path):
    """bench_quantization.py --smoke: routing of 8-bit and 4-bit equals bf16's before any timing, the byte formulas
    reproduce the measured bytes exactly (also after the QLoRA preparation), LoRA's count equals PEFT's, and the
    7B/14B shapes are computed."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location("bench_quantization", BENCH.parent / "bench_quantization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "quant.json"
    result = module.main(["--smoke", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for mode in ("int8", "nf4"):
        assert result["measured"]["routing"][mode]["router_logits_equal"]
        assert result["measured"]["routing"][mode]["moe_image_features_equal"]
        assert math.isfinite(result["measured"]["speed"]["ratios_over_bf16"][mode]["decode_time_per_token"]["median"])
    for mode in ("bf16", "int8", "nf4"):
        check = result["formula_check"][mode]
        assert check["predicted_bytes"] == check["measured_bytes"], mode
    memory = result["measured"]["memory"]
    assert memory["nf4"]["quant_state_bytes"] > 0 and memory["int8"]["quant_state_bytes"] > 0
    assert set(memory["nf4"]["linear_weights_by_part_and_class"]["language_model"]) == {"Linear4bit"}
    assert result["formula_check"]["measured_4bit_weights"] == result["formula_check"]["predicted_quantized_weights"]
    assert result["lora_check"]["predicted"] == result["lora_check"]["peft"]
    qlora = result["formula_check"]["qlora_prepared_nf4"]  # the recipes' k-bit preparation, measured
    assert qlora["predicted_bytes"] == qlora["measured_bytes"] and qlora["parameters_cast_back_to_bf16"] > 0
    seven, fourteen = result["computed"]["Parrot-7B"], result["computed"]["Parrot-14B"]
    assert 7.5e9 < seven["total_parameters"] < 9e9 and 14e9 < fourteen["total_parameters"] < 16e9
    for shape in (seven, fourteen):
        weights = shape["inference_weights"]
        assert (
            weights["nf4-double"]["weights_bytes"] < weights["nf4"]["weights_bytes"] < weights["int8"]["weights_bytes"]
        )
        assert weights["int8"]["weights_bytes"] < weights["bf16"]["weights_bytes"]
        training = shape["training"]
        for path in ("qlora_4bit", "qlora_8bit", "lora_bf16", "full_bf16"):
            assert training[path]["batch_1"]["total_bytes"] < training[path]["batch_4"]["total_bytes"]
