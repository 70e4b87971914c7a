"""Quantized loading keeps Parrot's routing: bitsandbytes 4-bit (nf4/fp4, double quantization) and 8-bit, and torchao
(when installed), through the standard `quantization_config=` of `from_pretrained`, in-package and as remote code.

The model declares what stays unquantized (`_keep_in_fp32_modules`): vision tower, projector, MoE router and
experts; transformers itself never quantizes `lm_head`. The router reads the vision tower's CLS token and the word
embeddings, none of which is quantized, so its weights must equal the unquantized model's exactly.
All on the CPU (bitsandbytes' CPU backend) with the quantizable tiny model (LLM layers 64/128 wide: bitsandbytes
quantizes blocks of 64).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from fixtures import QUESTIONS, chat, make_image, sharpen_routing
from torch import nn

from transformers_parrot.models.parrot._compat import IS_TRANSFORMERS_4
from transformers_parrot.models.parrot.modeling_parrot import UNQUANTIZED_MODULES
from transformers_parrot.quantization import (
    QuantizationSetupError,
    add_quantization_flags,
    bitsandbytes_config,
    quantization_config_from_args,
)

bnb = pytest.importorskip("bitsandbytes")

Auto = transformers.AutoModelForVision2Seq if IS_TRANSFORMERS_4 else transformers.AutoModelForImageTextToText
DTYPE_KWARG = "torch_dtype" if IS_TRANSFORMERS_4 else "dtype"
BNB_CONFIGS = {
    "nf4": {"load_in_4bit": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
    "nf4-double": {"load_in_4bit": True, "use_bnb_nested_quant": True},
    "fp4-double": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "use_bnb_nested_quant": True},
    "int8": {"load_in_8bit": True},
}
# Measured on the tiny model (float32 and bfloat16): relative logit error (Frobenius, over real tokens) 0.053 for
# every 4-bit type, 0.004-0.005 for 8-bit; next-token argmax agreement 0.96-0.97 (4-bit), 0.99 (8-bit); greedy
# tokens 100 % equal. 4 bits per weight in blocks of 64 leave a weight error of 9 % (nf4) to 12 % (fp4) of its norm,
# 8 bits well under 1 %: the bounds keep a 2-3x margin over what was measured and still fail on a wrong mapping
# (a quantized router or projector changes which tokens win, random weights give relative error ~1.4).
LOGIT_TOLERANCE = {"4bit": (0.15, 0.85), "8bit": (0.02, 0.95)}  # (relative error <, argmax agreement >=)
GREEDY_AGREEMENT = 0.75


def _load(folder, dtype=torch.float32, **kwargs):
    return Auto.from_pretrained(folder, **{DTYPE_KWARG: dtype}, **kwargs).eval()


def _load_bnb(folder, name: str, dtype=torch.float32):
    config = bitsandbytes_config(**BNB_CONFIGS[name], compute_dtype=dtype)
    return _load(folder, dtype, quantization_config=config, device_map="cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved quantizable tiny Parrot (routing sharpened), its processor, and a batch in six languages."""
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=3, quantizable=True)
    sharpen_routing(model)
    folder = tmp_path_factory.mktemp("parrot-quant")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    texts = [
        processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in QUESTIONS.values()
    ]
    batch = processor(text=texts, images=[make_image(i) for i in range(len(texts))], return_tensors="pt", padding=True)
    return folder, processor, batch


def _cast(batch, dtype):
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in batch.items()}


def _run(model, batch, dtype, generate: bool = False):
    batch = _cast(batch, dtype)
    with torch.no_grad():
        outputs = model(**batch, output_router_logits=True)
        tokens = model.generate(**batch, max_new_tokens=8, do_sample=False) if generate else None
    return outputs, tokens


def _linear_kinds(model) -> dict[str, set[str]]:
    """{top-level part: class names of its linear layers}; parts: vision_tower, multi_modal_projector, moe,
    language_model, lm_head."""
    kinds: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            part = name.split(".")[1] if name.startswith("model.") else name
            kinds.setdefault(part, set()).add(type(module).__name__)
    return kinds


@pytest.fixture(scope="module")
def references(saved):
    """Outputs of the unquantized model loaded in float32 and bfloat16."""
    folder, _, batch = saved
    return {
        dtype: _run(_load(folder, dtype), batch, dtype, generate=True) for dtype in (torch.float32, torch.bfloat16)
    }


def _kept_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype bitsandbytes loading leaves the declared modules in: the compute dtype on transformers 5; on 4.x
    float32 whatever the dtype (4.x upcasts `_keep_in_fp32_modules` under bitsandbytes)."""
    return torch.float32 if IS_TRANSFORMERS_4 else dtype


def _reference(saved, references, dtype: torch.dtype):
    """The unquantized model's (outputs, greedy tokens) with the declared modules in `_kept_dtype(dtype)`."""
    if _kept_dtype(dtype) == dtype:
        return references[dtype]
    folder, _, batch = saved
    model, full_precision = _load(folder, dtype), _load(folder, torch.float32)
    for part in UNQUANTIZED_MODULES:  # swapping modules, not `.to(dtype)`: that would also round RoPE's inv_freq
        setattr(model.model, part, getattr(full_precision.model, part))
    return _run(model, batch, dtype, generate=True)


@pytest.mark.compat
@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_only_the_llm_is_quantized(saved, name):
    """A plain BitsAndBytesConfig quantizes every LLM linear layer and nothing else: no skip list needed."""
    folder, _, _ = saved
    model = _load(
        folder,
        quantization_config=transformers.BitsAndBytesConfig(**{f"load_in_{name[-1]}bit": True}),
        device_map="cpu",
    )
    quantized = "Linear4bit" if name == "nf4" else "Linear8bitLt"
    assert _linear_kinds(model) == {
        "vision_tower": {"Linear"},
        "multi_modal_projector": {"Linear"},
        "moe": {"Linear"},
        "language_model": {quantized},
        "lm_head": {"Linear"},
    }
    assert set(UNQUANTIZED_MODULES) == {"vision_tower", "multi_modal_projector", "moe"}
    for part in UNQUANTIZED_MODULES:
        assert all(p.dtype == torch.float32 for p in getattr(model.model, part).parameters()), part
    assert model.model.moe.experts.gate_up_proj.dtype == torch.float32  # 3-D expert weights: never converted


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(BNB_CONFIGS))
def test_routing_equals_the_unquantized_model(saved, references, name, dtype):
    """Router logits and post-MoE visual tokens equal the unquantized model's bitwise (same compute dtype), on six
    images with prompts in six languages; the parts left in the compute dtype are in it."""
    folder, _, batch = saved
    model = _load_bnb(folder, name, dtype)
    reference, _ = _reference(saved, references, dtype)
    kept = [
        model.model.moe.gate.weight,
        model.model.moe.experts.down_proj,
        next(model.model.vision_tower.parameters()),
        model.model.multi_modal_projector.linear_2.weight,
    ]
    assert all(weight.dtype == _kept_dtype(dtype) for weight in kept) and model.lm_head.weight.dtype == dtype
    outputs, _ = _run(model, batch, dtype)
    assert reference.router_logits.shape == (len(QUESTIONS), model.config.num_experts)
    assert torch.equal(outputs.router_logits, reference.router_logits)
    assert torch.equal(outputs.moe_image_features, reference.moe_image_features)
    winners = reference.router_logits.argmax(-1)
    assert winners.unique().numel() > 1, "the test needs prompts that route differently"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["nf4", "fp4", "int8"])
def test_logits_close_and_greedy_tokens_mostly_equal(saved, references, name, dtype):
    folder, _, batch = saved
    model = _load_bnb(folder, name, dtype)
    outputs, tokens = _run(model, batch, dtype, generate=True)
    reference, reference_tokens = _reference(saved, references, dtype)
    real = batch["attention_mask"].bool()
    ours, theirs = outputs.logits[real].float(), reference.logits[real].float()
    max_error, min_agreement = LOGIT_TOLERANCE["8bit" if name == "int8" else "4bit"]
    assert (ours - theirs).norm() / theirs.norm() < max_error
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= min_agreement
    new = batch["input_ids"].shape[1]
    assert (tokens[:, new:] == reference_tokens[:, new:]).float().mean() >= GREEDY_AGREEMENT


def test_float16_runs_vision_and_moe_in_float32(saved):
    """float16 loading keeps the declared modules in float32 (transformers' `_keep_in_fp32_modules` rule); the
    forward runs them in their own dtype, and the 4-bit model still routes as the unquantized float16 one."""
    folder, _, batch = saved
    reference = _load(folder, torch.float16)
    quantized = _load_bnb(folder, "nf4", torch.float16)
    for model in (reference, quantized):
        assert model.model.moe.experts.down_proj.dtype == torch.float32
        assert model.model.multi_modal_projector.linear_1.weight.dtype == torch.float32
        assert model.model.language_model.embed_tokens.weight.dtype == torch.float16
    ours, _ = _run(quantized, batch, torch.float16)
    theirs, _ = _run(reference, batch, torch.float16)
    assert ours.logits.dtype == torch.float16 and torch.isfinite(ours.logits).all()
    assert torch.equal(ours.router_logits, theirs.router_logits)


@pytest.mark.parametrize("name", ["nf4-double", "int8"])
def test_save_and_reload_generates_the_same_tokens(saved, tmp_path, name):
    """bitsandbytes serialization: a quantized model saved before it has run reloads (pre-quantized) with the same
    weights and greedy tokens. On bitsandbytes' CPU backend, saving a 4-bit model that has already run gives a
    different model (docs/quantization.md): this test saves first on purpose."""
    folder, _, batch = saved
    model = _load_bnb(folder, name)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    reloaded = _load(tmp_path, device_map="cpu")
    assert _linear_kinds(reloaded) == _linear_kinds(model)
    ours, tokens = _run(reloaded, batch, torch.float32, generate=True)
    theirs, reference_tokens = _run(model, batch, torch.float32, generate=True)
    assert torch.equal(tokens, reference_tokens)
    assert torch.equal(ours.router_logits, theirs.router_logits)
    torch.testing.assert_close(ours.logits, theirs.logits)


REMOTE_LOADER = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers_parrot" or name.startswith("transformers_parrot."):
            raise ImportError("transformers_parrot is blocked in this process")
sys.meta_path.insert(0, Block())
import torch, transformers
folder, batch_file, out = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
major = int(transformers.__version__.split(".")[0])
Auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
dtype = {"dtype" if major >= 5 else "torch_dtype": torch.float32}
model = Auto.from_pretrained(folder, trust_remote_code=True, quantization_config=config, device_map="cpu", **dtype)
model.eval()
with torch.no_grad():
    outputs = model(**torch.load(batch_file), output_router_logits=True)
torch.save({"router_logits": outputs.router_logits, "logits": outputs.logits}, out)
kinds = {}
for name, module in model.named_modules():
    if isinstance(module, torch.nn.Linear):
        kinds.setdefault(name.split(".")[1] if name.startswith("model.") else name, set()).add(type(module).__name__)
print(json.dumps({"module": type(model).__module__, "kinds": {k: sorted(v) for k, v in kinds.items()}}))
"""


@pytest.mark.compat
def test_remote_code_loads_quantized_with_the_same_routing(saved, references, tmp_path):
    """The saved folder, loaded with `trust_remote_code=True` where `transformers_parrot` cannot be imported, gets the
    same declaration: only the LLM in 4 bits, router logits equal to the unquantized package model's."""
    folder, _, batch = saved
    torch.save(dict(batch), tmp_path / "batch.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_LOADER,
            str(folder),
            str(tmp_path / "batch.pt"),
            str(tmp_path / "out.pt"),
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    assert report["kinds"] == {
        "vision_tower": ["Linear"],
        "multi_modal_projector": ["Linear"],
        "moe": ["Linear"],
        "language_model": ["Linear4bit"],
        "lm_head": ["Linear"],
    }
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["router_logits"], references[torch.float32][0].router_logits)


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_quantization_flags(parser)
    return parser.parse_args(list(argv))


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args),
    )
    with pytest.raises(QuantizationSetupError, match=r"transformers-parrot\[quant\]"):
        quantization_config_from_args(_flags("--load_in_4bit"))
    assert quantization_config_from_args(_flags()) is None  # no flag: no bitsandbytes needed


def test_flags_build_the_config_they_name():
    config = quantization_config_from_args(
        _flags("--load_in_4bit", "--bnb_4bit_quant_type", "fp4", "--use_bnb_nested_quant"), torch.float32
    )
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (True, "fp4", True)
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert quantization_config_from_args(_flags("--load_in_8bit")).load_in_8bit


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--load_in_4bit", "--load_in_8bit"), "exclude each other"),
        (("--use_bnb_nested_quant",), "add --load_in_4bit"),
        (("--bnb_4bit_quant_type", "fp4"), "add --load_in_4bit"),
        (("--load_in_8bit", "--use_bnb_nested_quant"), "apply to --load_in_4bit only"),
    ],
)
def test_flag_combinations_that_cannot_be_honoured(argv, message):
    with pytest.raises(QuantizationSetupError, match=message):
        quantization_config_from_args(_flags(*argv))


def test_quantization_config_file(tmp_path):
    path = tmp_path / "quant.json"
    path.write_text(json.dumps({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}))
    config = quantization_config_from_args(_flags("--quantization_config", str(path)))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4"
    path.write_text("{}")
    with pytest.raises(QuantizationSetupError, match="quant_method"):
        quantization_config_from_args(_flags("--quantization_config", str(path)))
    with pytest.raises(QuantizationSetupError, match="cannot read"):
        quantization_config_from_args(_flags("--quantization_config", str(tmp_path / "missing.json")))
    with pytest.raises(QuantizationSetupError, match="exclude each other"):
        quantization_config_from_args(_flags("--quantization_config", str(path), "--load_in_8bit"))


def _torchao_config(name: str):
    """int8 weight-only; int4 weight-only as torchao's "intx" format (int4 values in int8 storage, groups of 32):
    its packed int4 formats need CUDA or the mslk package, neither of which runs on our CPU machines."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if name == "int8-weight-only":
        return transformers.TorchAoConfig(Int8WeightOnlyConfig())
    return transformers.TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))


@pytest.mark.parametrize("name", ["int8-weight-only", "int4-weight-only"])
def test_torchao_keeps_the_routing(saved, references, name):
    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao is not installed (the torchao extra)")
    folder, _, batch = saved
    dtype = torch.bfloat16
    model = _load(folder, dtype, quantization_config=_torchao_config(name), device_map="cpu")
    plain = {part for part, kinds in _weight_kinds(model).items() if kinds == {"Parameter"}}
    assert plain == {"vision_tower", "multi_modal_projector", "moe", "lm_head"}
    assert "Parameter" not in _weight_kinds(model)["language_model"]
    outputs, tokens = _run(model, batch, dtype, generate=True)
    reference, reference_tokens = references[dtype]
    assert torch.equal(outputs.router_logits, reference.router_logits)
    real = batch["attention_mask"].bool()
    ours, theirs = outputs.logits[real].float(), reference.logits[real].float()
    max_error, min_agreement = LOGIT_TOLERANCE["8bit" if name.startswith("int8") else "4bit"]
    assert (ours - theirs).norm() / theirs.norm() < max_error
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= min_agreement
    new = batch["input_ids"].shape[1]
    assert (tokens[:, new:] == reference_tokens[:, new:]).float().mean() >= GREEDY_AGREEMENT


def _weight_kinds(model) -> dict[str, set[str]]:
    """{top-level part: class names of its linear layers' weights} (torchao swaps weights, not modules)."""
    kinds: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            part = name.split(".")[1] if name.startswith("model.") else name
            kinds.setdefault(part, set()).add(type(module.weight).__name__)
    return kinds
