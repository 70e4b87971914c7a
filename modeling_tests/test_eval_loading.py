"""parrot-eval's loading flags: backend-specific flags refused with the other backend (one-line error, exit 2),
quantized loading (bitsandbytes 4-bit on CPU) of a tiny saved Parrot, --device_map auto."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_evaluation import data_dir  # noqa: F401  (fixture: synthetic MMMB / MMBench folders)

from transformers_parrot.evaluation import cli as eval_cli

BASE = ["--model", "unused", "--benchmark", "mmmb", "--output", "out"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tensor_parallel_size", "2"], "--tensor_parallel_size configure the vLLM engine: add --backend vllm"),
        (["--max_model_len", "512", "--gpu_memory_utilization", "0.5"], "--max_model_len, --gpu_memory_utilization"),
        (["--backend", "vllm", "--batch_size", "4"], "--batch_size apply to --backend hf only"),
        (["--backend", "vllm", "--load_in_4bit"], "--load_in_4bit apply to --backend hf only"),
        (["--backend", "vllm", "--device_map", "auto"], "--device_map apply to --backend hf only"),
        (["--backend", "vllm", "--tensor_parallel_size", "0"], "--tensor_parallel_size must be >= 1"),
        (["--backend", "vllm", "--gpu_memory_utilization", "1.5"], "--gpu_memory_utilization must be in (0, 1]"),
    ],
)
def test_flags_of_the_other_backend_are_refused(extra, message, capsys):
    assert eval_cli.main([*BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parrot-eval: error: ") and message in err and err.count("\n") == 1


def _tiny_checkpoint(path, **kwargs):
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0, **kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _run(checkpoint, data_dir, out, *extra) -> int:  # noqa: F811
    return eval_cli.main(
        [
            "--model",
            str(checkpoint),
            "--benchmark",
            "mmmb",
            "--languages",
            "en",
            "--data_dir",
            str(data_dir),
            "--output",
            str(out),
            "--max_new_tokens",
            "3",
            "--no_progress",
            "-q",
            *extra,
        ]
    )


def test_device_map_auto_and_its_conflicts(tmp_path, data_dir, capsys):  # noqa: F811
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    assert _run(checkpoint, data_dir, tmp_path / "plain", "--device", "cpu", "--dtype", "float32") == 0
    assert _run(checkpoint, data_dir, tmp_path / "auto", "--device_map", "auto", "--dtype", "float32") == 0
    for name in ("predictions.jsonl", "results.json"):  # one CPU: accelerate places everything there
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    capsys.readouterr()
    assert _run(checkpoint, data_dir, tmp_path / "x", "--device_map", "auto", "--device", "cpu") == 2
    assert "--device_map auto places the model itself: leave out --device" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (quant extra)")
def test_load_in_4bit(tmp_path, data_dir, capsys):  # noqa: F811
    import bitsandbytes as bnb

    from transformers_parrot.evaluation import runner
    from transformers_parrot.quantization import bitsandbytes_config

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt", quantizable=True)
    model, _ = runner.load_model_and_processor(
        str(checkpoint), dtype="float32", device="cpu", quantization_config=bitsandbytes_config(load_in_4bit=True)
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.language_model.modules())
    assert _run(checkpoint, data_dir, tmp_path / "q", "--load_in_4bit", "--dtype", "float32", "--device", "cpu") == 0
    preds = [json.loads(line) for line in (tmp_path / "q" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(isinstance(p["prediction"], str) for p in preds)
    capsys.readouterr()
    assert _run(checkpoint, data_dir, tmp_path / "q2", "--load_in_4bit", "--load_in_8bit") == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_backend_vllm_without_vllm_names_the_install(tmp_path, data_dir, capsys):  # noqa: F811
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    capsys.readouterr()
    assert _run(checkpoint, data_dir, tmp_path / "v", "--backend", "vllm") == 2
    err = capsys.readouterr().err
    assert "the vllm backend needs vLLM" in err and "pip install vllm" in err and err.count("\n") == 1
