"""Conversion of original-format Parrot checkpoints: a tiny checkpoint in the exact original layout is written here
(random weights, original-style tokenizer without <image>) and converted, loaded and verified.

Sections: builders and fixtures; the key mapping table; the converted folder; input variants; refused checkpoints;
input errors (every path checked before writing, clean `error:` lines and exit codes); publishing (`--push_to_hub`
checked before any work); the command line (flag spellings, entry points); one home for auto_map and the
model-index; the model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from transformers_parrot import conversion
from transformers_parrot.assets.build_tiny_tokenizer import write_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 32, 2, 4, 2, 64
V_HIDDEN, V_LAYERS, V_INTER, IMAGE_SIZE, PATCH = 24, 3, 48, 30, 10
NUM_EXPERTS, MOE_INTER = 3, 40


@pytest.fixture(scope="session")
def original_tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("orig_tok")
    write_tokenizer(folder, with_image_token=False)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def _clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=V_HIDDEN,
        intermediate_size=V_INTER,
        num_hidden_layers=V_LAYERS,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=16,
    )


def _clip_preprocessor() -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }


def _clip_vision_state(seed: int) -> dict[str, torch.Tensor]:
    """`vision_model.*` weights of a random tiny CLIPVisionModel (the names a 4.x CLIPVisionModel saves)."""
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(_clip_config())
    state = model.state_dict()
    for value in state.values():  # visible weights (default init leaves biases at zero)
        if value.is_floating_point():
            value.add_(torch.randn_like(value) * 0.05)
    return {(k if k.startswith("vision_model.") else "vision_model." + k): v.clone() for k, v in state.items()}


def write_clip_folder(folder: Path, seed: int = 1, full_clip: bool = True) -> Path:
    """A CLIP checkpoint folder like openai/clip-vit-large-patch14-336: a full CLIPModel config.json, a
    preprocessor_config.json and (full_clip) text-tower tensors next to the vision ones."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vision = _clip_config().to_dict()
    vision.pop("model_type", None)
    config = (
        {
            "model_type": "clip",
            "architectures": ["CLIPModel"],
            "projection_dim": 16,
            "vision_config": vision,
            "text_config": {"hidden_size": 16},
        }
        if full_clip
        else {**_clip_config().to_dict(), "model_type": "clip_vision_model"}
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(_clip_preprocessor()))
    state = _clip_vision_state(seed)
    if full_clip:
        state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
        state["visual_projection.weight"] = torch.randn(16, V_HIDDEN)
        state["logit_scale"] = torch.tensor(2.6592)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def original_state(vocab_rows: int, seed: int = 0, with_vision: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the exact original key names."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(**_qwen_fields(vocab_rows)))
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    for value in state.values():
        value.add_(torch.randn_like(value) * 0.02)
    g = torch.Generator().manual_seed(seed + 1)
    state["model.mm_projector.0.weight"] = torch.randn(HIDDEN, V_HIDDEN, generator=g) * 0.2
    state["model.mm_projector.0.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    state["model.mm_projector.2.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * 0.2
    state["model.mm_projector.2.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    state["model.moe_model.gate.weight"] = torch.randn(NUM_EXPERTS, HIDDEN, generator=g) * 40.0
    for e in range(NUM_EXPERTS):
        state[f"model.moe_model.experts.{e}.gate_proj.weight"] = torch.randn(MOE_INTER, HIDDEN, generator=g) * 0.2
        state[f"model.moe_model.experts.{e}.up_proj.weight"] = torch.randn(MOE_INTER, HIDDEN, generator=g) * 0.2
        state[f"model.moe_model.experts.{e}.down_proj.weight"] = torch.randn(HIDDEN, MOE_INTER, generator=g) * 0.2
    if with_vision:
        for k, v in _clip_vision_state(seed + 2).items():
            state["model.vision_tower.vision_tower." + k] = v
    return state


def _qwen_fields(vocab_rows: int) -> dict:
    return dict(
        vocab_size=vocab_rows,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=LAYERS,
        attention_dropout=0.0,
        initializer_range=0.02,
    )


def original_config(vocab_rows: int, vision_tower: str, **overrides) -> dict:
    config = {
        "_name_or_path": "/playground/checkpoints/Parrot_S2_tiny",
        "architectures": ["ParrotQwen2ForCausalLM"],
        "model_type": "parrot_qwen2",
        **_qwen_fields(vocab_rows),
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "use_cache": True,
        "mm_vision_tower": vision_tower,
        "mm_hidden_size": V_HIDDEN,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "num_experts": NUM_EXPERTS,
        "moe_hidden_size": HIDDEN,
        "moe_intermediate_size": MOE_INTER,
        "moe_top_k": NUM_EXPERTS,
        "moe_weight": 0.25,
        "use_moe": True,
        "use_moe_residual": True,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "mm_projector_lr": None,
        "use_mm_proj": True,
    }
    config.update(overrides)
    return config


def write_original(
    folder: Path,
    tokenizer_dir: Path,
    clip_dir: Path,
    *,
    fmt: str = "safetensors",
    shards: int = 1,
    with_vision: bool = True,
    spare_rows: int = 8,
    seed: int = 0,
    state_hook=None,
    **config_overrides,
) -> Path:
    """An original-format Parrot checkpoint: config.json, tokenizer files, weights (safetensors or .bin, single
    file or `shards` files with an index), README with a license."""
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    n_tokens = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 3
    rows = n_tokens + spare_rows
    state = original_state(rows, seed=seed, with_vision=with_vision)
    if state_hook:
        state_hook(state)
    (folder / "config.json").write_text(json.dumps(original_config(rows, str(clip_dir), **config_overrides)))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny original Parrot\n")
    keys = sorted(state)
    chunks = [keys[i::shards] for i in range(shards)]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, chunk in enumerate(chunks, start=1):
        name = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in chunk}
        if fmt == "safetensors":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
        weight_map.update({k: name for k in chunk})
    if shards > 1:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return write_clip_folder(tmp_path_factory.mktemp("clip") / "clip-tiny")


@pytest.fixture(scope="session")
def converted(tmp_path_factory, original_tokenizer, clip_dir):
    """One original checkpoint (safetensors, 2 shards, vision inside) converted once; shared by several tests."""
    root = tmp_path_factory.mktemp("conv")
    original = write_original(root / "orig", original_tokenizer, clip_dir, shards=2)
    result = conversion.convert(original, root / "hf", max_shard_size="40KB")
    return original, result


def _n_original_tokens(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


# ------------------------------------------------------------------------------------------------ key mapping table
def test_key_mapping_table_read_forward_matches_the_plan():
    """Every original key the plan asks for, mapped forward by hand through the (original → ours, operation) table,
    lands on the plan's target with the plan's operation; every tensor of the model is covered by the plan."""
    import re

    from transformers_parrot.conversion.key_mapping import KEY_MAPPING, Op
    from transformers_parrot.models.parrot.modeling_parrot import ParrotForConditionalGeneration
    from transformers_parrot.tiny import tiny_config

    config = tiny_config()
    with torch.device("meta"):
        state = ParrotForConditionalGeneration(config).state_dict()
    plan = conversion.build_plan(state, config.num_experts, vocab_rows=config.text_config.vocab_size, tied=False)
    assert {piece.target for piece in plan.values()} == set(state)
    for original, piece in plan.items():
        hits = []
        for pattern, ours, op in KEY_MAPPING:
            regex = re.escape(pattern).replace(r"\*", "(.+)").replace(r"\{e\}", r"(\d+)")
            match = re.fullmatch(regex, original)
            if match:
                hits.append((ours.replace("*", match.group(1)) if "*" in pattern else ours, op))
        assert hits == [(piece.target, piece.op)], (original, hits)
    experts = [p for p in plan.values() if p.op in (Op.STACK_GATE, Op.STACK_UP, Op.STACK_DOWN)]
    assert len(experts) == 3 * config.num_experts


# ------------------------------------------------------------------------------------------------ the converted folder
def test_converted_folder_layout_and_config(converted, original_tokenizer):
    original, result = converted
    out = result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(result.shards) > 1 and set(index["weight_map"].values()) == set(result.shards)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "parrot"
    assert config["moe_residual_weight"] == 0.25 and config["use_moe"] is True and config["moe_top_k"] is None
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "full"
    assert config["image_seq_length"] == (IMAGE_SIZE // PATCH) ** 2 + 1
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_parrot.ParrotForConditionalGeneration"
    for name in ("modeling_parrot.py", "configuration_parrot.py", "processing_parrot.py", "README.md"):
        assert (out / name).is_file(), name
    # <image> takes the first spare embedding row: vocabulary unchanged, every row copied as is
    n_tokens = _n_original_tokens(original_tokenizer)
    assert result.image_token_id == n_tokens and not result.resized_vocab
    assert config["text_config"]["vocab_size"] == n_tokens + 8
    assert config["text_config"]["rope_theta"] == 50000.0  # legacy key too: 4.57 ignores rope_parameters
    state = _load_state(out)
    orig = _load_state(original)
    assert torch.equal(state["model.language_model.embed_tokens.weight"], orig["model.embed_tokens.weight"])
    assert torch.equal(state["lm_head.weight"], orig["lm_head.weight"])
    for e in range(NUM_EXPERTS):
        gate_up = state["model.moe.experts.gate_up_proj"][e]
        assert torch.equal(gate_up[:MOE_INTER], orig[f"model.moe_model.experts.{e}.gate_proj.weight"])
        assert torch.equal(gate_up[MOE_INTER:], orig[f"model.moe_model.experts.{e}.up_proj.weight"])
        assert torch.equal(
            state["model.moe.experts.down_proj"][e], orig[f"model.moe_model.experts.{e}.down_proj.weight"]
        )
    assert torch.equal(
        state["model.vision_tower.encoder.layers.1.mlp.fc1.weight"],
        orig["model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight"],
    )
    generation = json.loads((out / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert generation["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert generation["pad_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.encode("<image>", add_special_tokens=False) == [result.image_token_id]
    assert tok.model_max_length == 2048


def test_converted_loads_with_auto_classes_and_matches_processor(converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from transformers_parrot.assets import bundled_image

    _, result = converted
    model = AutoModelForImageTextToText.from_pretrained(str(result.output)).eval()
    processor = AutoProcessor.from_pretrained(str(result.output))
    assert type(model).__name__ == "ParrotForConditionalGeneration"
    assert processor.image_processor.do_pad and processor.image_processor.crop_size["height"] == IMAGE_SIZE
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Что на картинке?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n")
    inputs = processor(images=[bundled_image()], text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 or int(out[0, -1]) == model.generation_config.eos_token_id


def test_verify_passes_cli_verify_only(converted, capsys):
    original, result = converted
    assert conversion.main(["--input", str(original), "--output", str(result.output), "--verify_only"]) == 0
    printed = capsys.readouterr().out
    assert "verification passed" in printed and "argmax agrees on 6/6 prompts" in printed
    for name in ("routing_weights", "image_features", "last_token_logits"):
        value = float(printed.split(f"max |diff| {name}: ")[1].split()[0])
        assert value < 1e-5, (name, value)
    assert printed.index("max |diff|") < printed.index("verification passed")


def test_tied_embeddings_without_lm_head(tmp_path, original_tokenizer, clip_dir):
    """A tied-embedding LLM saved without lm_head.weight (and no spare row: the tied matrix grows once)."""
    original = write_original(
        tmp_path / "orig",
        original_tokenizer,
        clip_dir,
        spare_rows=0,
        state_hook=lambda state: state.pop("lm_head.weight"),
        tie_word_embeddings=True,
    )
    result = conversion.convert(original, tmp_path / "hf")
    assert result.resized_vocab and result.config.tie_word_embeddings
    assert "lm_head.weight" not in _load_state(tmp_path / "hf")
    report = conversion.verify(original, tmp_path / "hf", log=lambda message: None)
    assert report.ok, report.failures


REMOTE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["transformers_parrot"] = None  # the package must not be importable: remote code only
    import torch, transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from PIL import Image
    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
        "text": "What is in the image?"}]}], add_generation_prompt=True)
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    inputs = processor(images=[image], text=text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    print("LOGITS", ",".join(f"{x:.6f}" for x in logits[:8].tolist()))
""")


def _remote_pythons() -> list[str]:
    pythons = [sys.executable]
    other = Path(__file__).resolve().parents[1] / ".venv457" / "bin" / "python"
    if other.is_file() and os.environ.get("PARROT_SKIP_457") != "1":
        pythons.append(str(other))
    return pythons


@pytest.mark.parametrize("python", _remote_pythons(), ids=lambda p: "457" if "457" in p else "current")
def test_trust_remote_code_without_package(converted, tmp_path, python):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, result = converted
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [python, "-c", REMOTE_SCRIPT, str(result.output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    remote = [float(x) for x in run.stdout.split("LOGITS ")[1].split(",")]
    model = AutoModelForImageTextToText.from_pretrained(str(result.output)).eval()
    processor = AutoProcessor.from_pretrained(str(result.output))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[Image.new("RGB", (40, 20), (200, 10, 10))], text=text, return_tensors="pt")
    with torch.no_grad():
        local = model(**inputs).logits[0, -1, :8]
    assert torch.allclose(local, torch.tensor(remote), atol=1e-4), (local, remote)


# ------------------------------------------------------------------------------------------------ input variants
def test_bin_single_file_vision_from_mm_vision_tower_resized_vocab(tmp_path, original_tokenizer, clip_dir, capsys):
    """Pickled single .bin without vision weights (they come from the full CLIP folder named by mm_vision_tower,
    whose text tower is left out) and no spare embedding row: the vocabulary grows by one mean-initialised row."""
    original = write_original(
        tmp_path / "orig", original_tokenizer, clip_dir, fmt="bin", with_vision=False, spare_rows=0
    )
    out = tmp_path / "hf"
    assert conversion.main(["--input", str(original), "--output", str(out), "--verify", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "resized embedding row" in printed and "verification passed" in printed
    assert "text_model.embeddings.token_embedding.weight (not part of the vision tower)" in printed
    n_tokens = _n_original_tokens(original_tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["image_token_id"] == n_tokens and config["text_config"]["vocab_size"] == n_tokens + 1
    state, orig = _load_state(out), torch.load(original / "pytorch_model.bin", weights_only=True)
    for new, old in (
        ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ):
        assert torch.equal(state[new][:n_tokens], orig[old])
        assert torch.allclose(state[new][n_tokens], orig[old].mean(0))
    clip = _clip_vision_state(1)
    assert torch.equal(state["model.vision_tower.post_layernorm.weight"], clip["vision_model.post_layernorm.weight"])


def test_sharded_bin_vision_tower_override_bf16(tmp_path, original_tokenizer):
    """Sharded .bin with vision weights inside, overridden by --vision_tower (a CLIPVisionModel saved by this
    transformers version, i.e. without the vision_model. level); bfloat16 output; verify in bfloat16."""
    from transformers import CLIPVisionModel

    tower = tmp_path / "tower"
    torch.manual_seed(7)
    CLIPVisionModel(_clip_config()).save_pretrained(str(tower))
    (tower / "preprocessor_config.json").write_text(json.dumps(_clip_preprocessor()))
    original = write_original(
        tmp_path / "orig", original_tokenizer, tmp_path / "nonexistent-clip", fmt="bin", shards=3
    )
    out = tmp_path / "hf"
    result = conversion.convert(original, out, vision_tower=str(tower), dtype="bfloat16")
    assert any("replaced by --vision_tower" in name for name in result.ignored)
    state = _load_state(out)
    assert state["lm_head.weight"].dtype == torch.bfloat16
    tower_state = _load_state(tower)  # 5.x saves CLIPVisionModel without the vision_model. level, 4.x with it
    q_proj = "encoder.layers.0.self_attn.q_proj.weight"
    q_proj = q_proj if q_proj in tower_state else "vision_model." + q_proj
    assert torch.equal(
        state["model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"], tower_state[q_proj].to(torch.bfloat16)
    )
    report = conversion.verify(original, out, vision_tower=str(tower), compute_dtype="bfloat16")
    assert report.ok, report.failures


# ------------------------------------------------------------------------------------------------ refused checkpoints
def _expect_failure(tmp_path, original_tokenizer, clip_dir, hook, *needles, **config_overrides):
    original = write_original(tmp_path / "orig", original_tokenizer, clip_dir, state_hook=hook, **config_overrides)
    with pytest.raises(conversion.ConversionError) as err:
        conversion.convert(original, tmp_path / "hf")
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").glob("*.safetensors"))
    return original


def test_missing_key_fails_naming_it(tmp_path, original_tokenizer, clip_dir, capsys):
    key = "model.moe_model.experts.1.up_proj.weight"
    original = _expect_failure(tmp_path, original_tokenizer, clip_dir, lambda s: s.pop(key), "missing", key)
    assert conversion.main(["--input", str(original), "--output", str(tmp_path / "cli")]) == 2
    assert key in capsys.readouterr().err


def test_wrong_shape_fails_naming_it(tmp_path, original_tokenizer, clip_dir):
    key = "model.layers.1.self_attn.k_proj.weight"

    def hook(state):
        state[key] = torch.zeros(3, HIDDEN)

    _expect_failure(tmp_path, original_tokenizer, clip_dir, hook, "wrong shape", key)


def test_unexpected_key_fails_naming_it(tmp_path, original_tokenizer, clip_dir):
    key = "model.moe_model.experts.0.extra_proj.weight"

    def hook(state):
        state[key] = torch.zeros(2, 2)
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # a known buffer: ignored, reported

    _expect_failure(tmp_path, original_tokenizer, clip_dir, hook, "unexpected", key)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"mm_projector_type": "linear"}, "mm_projector_type"),
        ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type"),
        ({"mm_vision_select_feature": "patch"}, "cls_patch"),
    ],
)
def test_unsupported_settings_fail(tmp_path, original_tokenizer, clip_dir, overrides, needle):
    _expect_failure(tmp_path, original_tokenizer, clip_dir, None, needle, **overrides)


def test_settings_mapping():
    base = original_config(100, "clip")
    assert conversion.multimodal_settings({**base, "use_moe_residual": False})["moe_residual_weight"] == 0.0
    mapped = conversion.multimodal_settings(
        {**base, "use_moe": False, "mm_vision_select_feature": "patch", "image_aspect_ratio": "square", "moe_top_k": 2}
    )
    assert mapped["vision_feature_select_strategy"] == "default" and mapped["do_pad"] is False
    assert mapped["use_moe"] is False and mapped["moe_top_k"] is None  # the original forward is always dense


def test_value_corruption_is_caught_by_verify(converted, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    original, result = converted
    broken = tmp_path / "broken"
    shutil.copytree(result.output, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = broken / index["weight_map"]["model.moe.gate.weight"]
    tensors = load_file(str(shard))
    tensors["model.moe.gate.weight"] = tensors["model.moe.gate.weight"].flip(0).contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    assert conversion.main(["--input", str(original), "--output", str(broken), "--verify_only"]) == 1
    captured = capsys.readouterr()
    assert "routing_weights" in captured.err and "VERIFICATION FAILED" in captured.err
    assert "verification passed" not in captured.out


# ------------------------------------------------------------------------------------------------ input errors
def _run_cli(*args: str) -> tuple[int, str, str]:
    """parrot-convert in a subprocess (as a user runs it): exit code, stdout, stderr."""
    run = subprocess.run(
        [sys.executable, "-m", "transformers_parrot.conversion", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return run.returncode, run.stdout, run.stderr


def _assert_clean_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 with one `error:` line naming the problem, no traceback."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    line = next(line for line in err.splitlines() if line.startswith("parrot-convert: error: "))
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="session")
def small_original(tmp_path_factory, original_tokenizer, clip_dir) -> Path:
    return write_original(tmp_path_factory.mktemp("small") / "Parrot-tiny", original_tokenizer, clip_dir, shards=2)


def test_mistyped_local_input_is_a_missing_local_folder(small_original, tmp_path):
    typo = small_original.parent / "Parrot-tny"
    line = _assert_clean_error(
        *_run_cli("--input", str(typo), "--output", str(tmp_path / "hf"))[::2],
        f"--input {typo}: no such local folder",
        "did you mean",
        "Parrot-tiny",
    )
    assert "repo" not in line.lower()
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name, hint", [("Parrot-7b", None), ("models/Parrot-tny", "models/Parrot-tiny")])
def test_repo_id_shaped_name_not_local_and_hub_offline(tmp_path, monkeypatch, capsys, name, hint):
    """A name that is also a valid repo id and no local folder, with the Hub offline: both said plainly."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "Parrot-tiny").mkdir(parents=True)
    assert conversion.main(["--input", name, "--output", str(tmp_path / "hf")]) == 2
    line = _assert_clean_error(2, capsys.readouterr().err, f"--input {name}: no such local folder", "HF_HUB_OFFLINE")
    assert hint is None or f"did you mean {hint}?" in line
    assert not (tmp_path / "hf").exists()


def test_hub_download_failure_is_a_clean_error(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    def not_found(*args, **kwargs):
        raise RuntimeError("404 Client Error: Repository Not Found for url: https://huggingface.co/api/models/x/y")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", not_found)
    assert conversion.main(["--input", "someone/no-such-parrot", "--output", str(tmp_path / "hf")]) == 2
    _assert_clean_error(
        2, capsys.readouterr().err, "no such local folder", "could not be downloaded", "Repository Not Found"
    )


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_corrupt_shard_exits_2_naming_the_file(tmp_path, original_tokenizer, clip_dir, fmt, capsys):
    original = write_original(tmp_path / "orig", original_tokenizer, clip_dir, fmt=fmt, shards=2)
    shard = sorted(original.glob(f"*.{fmt}"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # an interrupted download
    code = conversion.main(["--input", str(original), "--output", str(tmp_path / "hf")])
    _assert_clean_error(code, capsys.readouterr().err, shard.name, "corrupt or incomplete")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "case",
    ["results_missing", "results_not_json", "results_wrong_layout", "vision_tower", "max_shard_size", "input_is_file"],
)
def test_every_input_checked_before_writing(small_original, tmp_path, case, capsys):
    """A bad path or value fails with exit 2 before anything is written; an existing output is left untouched
    even with --overwrite."""
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("previous conversion")
    bad = tmp_path / "results.json"
    args = {
        "results_missing": ["--results", str(tmp_path / "missing.json")],
        "results_not_json": ["--results", str(bad)],
        "results_wrong_layout": ["--results", str(bad)],
        "vision_tower": ["--vision_tower", str(tmp_path / "no-such-clip")],
        "max_shard_size": ["--max_shard_size", "5 gigabytes"],
        "input_is_file": [],
    }[case]
    bad.write_text("{not json" if case == "results_not_json" else json.dumps({"mmmb": [70.0]}))
    source = str(small_original / "config.json") if case == "input_is_file" else str(small_original)
    needle = {
        "results_missing": "missing.json",
        "results_not_json": "results.json",
        "results_wrong_layout": "mmmb",
        "vision_tower": "no-such-clip: no such local folder",
        "max_shard_size": "--max_shard_size",
        "input_is_file": "is a file",
    }[case]
    code = conversion.main(["--input", source, "--output", str(out), "--overwrite", *args])
    _assert_clean_error(code, capsys.readouterr().err, needle)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_verify_only_without_output_is_a_clean_error(small_original, tmp_path, capsys):
    code = conversion.main(["--input", str(small_original), "--output", str(tmp_path / "none"), "--verify_only"])
    _assert_clean_error(code, capsys.readouterr().err, "no converted model")


def test_training_machine_vision_tower_error_recommends_what_works(tmp_path, original_tokenizer, clip_dir, capsys):
    """Released configs name `/playground/models/clip-vit-large-patch14-336`. Offline, its config cannot be fetched:
    the error says to download the tower and pass --vision_tower; a folder with only the config files (the
    checkpoint carries the vision weights) then converts and verifies."""
    import shutil

    original = write_original(
        tmp_path / "orig",
        original_tokenizer,
        clip_dir,
        mm_vision_tower="/playground/models/clip-vit-large-patch14-336",
    )
    out = tmp_path / "hf"
    assert conversion.main(["--input", str(original), "--output", str(out)]) == 2
    line = _assert_clean_error(
        2,
        capsys.readouterr().err,
        "openai/clip-vit-large-patch14-336",
        "hf download openai/clip-vit-large-patch14-336 --local-dir clip-vit-large-patch14-336",
        "--vision_tower clip-vit-large-patch14-336",
        "config.json and preprocessor_config.json",
    )
    assert not out.exists(), line

    config_only = tmp_path / "clip-vit-large-patch14-336"
    config_only.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(clip_dir / name, config_only / name)
    assert (
        conversion.main(
            ["--input", str(original), "--output", str(out), "--vision_tower", str(config_only), "--verify"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "vision from checkpoint" in printed and "verification passed" in printed
    state, orig = _load_state(out), _load_state(original)  # the checkpoint's own vision weights were kept
    assert torch.equal(
        state["model.vision_tower.post_layernorm.weight"],
        orig["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"],
    )


def test_config_only_tower_for_checkpoint_without_vision_weights_fails(tmp_path, original_tokenizer, clip_dir, capsys):
    import shutil

    config_only = tmp_path / "clip-config"
    config_only.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(clip_dir / name, config_only / name)
    original = write_original(tmp_path / "orig", original_tokenizer, clip_dir, with_vision=False)
    code = conversion.main(
        ["--input", str(original), "--output", str(tmp_path / "hf"), "--vision_tower", str(config_only)]
    )
    _assert_clean_error(code, capsys.readouterr().err, "no vision weights", "with weights")


# ------------------------------------------------------------------------------------------------ publishing
class FakeHub:
    """Stands in for the Hub behind huggingface_hub.HfApi: a logged-in user, or a failure."""

    def __init__(self, monkeypatch, *, token="hf_test", role="write", whoami_error=None, upload_error=None):
        import huggingface_hub
        from huggingface_hub import constants

        self.calls: list[tuple[str, object]] = []
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)

        def whoami(api, *args, **kwargs):
            self.calls.append(("whoami", api.token))
            if whoami_error is not None:
                raise whoami_error
            return {"name": "me", "orgs": [{"name": "my-org"}], "auth": {"accessToken": {"role": role}}}

        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id))

        def upload_folder(api, *, folder_path, repo_id, **kwargs):
            self.calls.append(("upload_folder", (Path(folder_path), repo_id)))
            if upload_error is not None:
                raise upload_error

        for name, fn in (("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder)):
            monkeypatch.setattr(huggingface_hub.HfApi, name, fn)


@pytest.mark.parametrize(
    "case, code, needle",
    [
        ("invalid_repo_id", 2, "not a valid Hub repo id"),
        ("offline", 2, "HF_HUB_OFFLINE=1"),
        ("no_token", 2, "hf auth login"),
        ("read_only_token", 2, "read-only"),
        ("foreign_namespace", 2, "cannot create repos under 'someone-else'"),
        ("network", 3, "cannot reach the Hub"),
    ],
)
def test_push_to_hub_checked_before_any_work(small_original, tmp_path, monkeypatch, capsys, case, code, needle):
    repo = {"invalid_repo_id": "me/bad repo!", "foreign_namespace": "someone-else/Parrot-hf"}.get(case, "me/Parrot-hf")
    if case != "offline":
        FakeHub(
            monkeypatch,
            token=None if case == "no_token" else "hf_test",
            role="read" if case == "read_only_token" else "write",
            whoami_error=ConnectionError("Name or service not known") if case == "network" else None,
        )
    out = tmp_path / "hf"
    assert conversion.main(["--input", str(small_original), "--output", str(out), "--push_to_hub", repo]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err and err.startswith("parrot-convert: error: "), err
    assert not out.exists()  # nothing was converted


def test_push_to_hub_uploads_after_conversion_and_reports_upload_failure(
    small_original, tmp_path, monkeypatch, capsys
):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "hf"
    assert (
        conversion.main(["--input", str(small_original), "--output", str(out), "--push_to_hub", "my-org/Parrot-hf"])
        == 0
    )
    assert [c[0] for c in hub.calls] == ["whoami", "create_repo", "upload_folder"]
    assert hub.calls[2][1] == (out, "my-org/Parrot-hf") and (out / "config.json").is_file()
    assert "pushed" in capsys.readouterr().out

    FakeHub(monkeypatch, upload_error=ConnectionError("connection reset"))
    code = conversion.main(
        ["--input", str(small_original), "--output", str(out), "--overwrite", "--push_to_hub", "me/Parrot-hf"]
    )
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err and f"hf upload me/Parrot-hf {out}" in err, err
    assert (out / "config.json").is_file()  # the converted folder stays for a retry


def test_readme_publishing_uses_hf_cli_and_documents_exit_codes():
    from transformers_parrot.conversion import errors

    page = (Path(__file__).resolve().parents[1] / "docs" / "converting.md").read_text(encoding="utf-8")
    assert "huggingface-cli" not in page
    section = page.split("## Publishing on the Hub", 1)[1].split("\n## ", 1)[0]
    assert "hf auth login" in section
    exit_codes = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (errors.EXIT_OK, errors.EXIT_VERIFICATION_FAILED, errors.EXIT_INPUT_ERROR, errors.EXIT_HUB_ERROR):
        assert f"| {code} |" in exit_codes


# ------------------------------------------------------------------------------------------------ command line
def test_every_flag_has_underscore_and_dashed_spelling(small_original, tmp_path):
    parser = conversion.build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.option_strings[0] == f"--{action.dest}", action.option_strings
        if "_" in action.dest:
            assert f"--{action.dest.replace('_', '-')}" in action.option_strings
    underscore = [
        "--input",
        "a",
        "--output",
        "b",
        "--vision_tower",
        "v",
        "--max_shard_size",
        "1MB",
        "--verify_only",
        "--verify_dtype",
        "float32",
        "--model_name",
        "m",
        "--push_to_hub",
        "me/r",
    ]
    dashed = [arg.replace("_", "-") if arg.startswith("--") else arg for arg in underscore]
    assert vars(parser.parse_args(underscore)) == vars(parser.parse_args(dashed))
    assert parser.parse_args(dashed).max_shard_size == "1MB"


def test_max_shard_size_uses_transformers_parser():
    from transformers_parrot.conversion.writing import parse_shard_size

    assert parse_shard_size("40KB") == 40_000 and parse_shard_size("1MiB") == 2**20 and parse_shard_size(123) == 123


def test_console_script_and_conversion_script():
    from importlib.metadata import entry_points

    from transformers_parrot.conversion.cli import main as convert_main

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "parrot-convert"]
    assert script.load() is convert_main
    path = Path(__file__).resolve().parents[1] / "conversion" / "convert_parrot_weights_to_hf.py"
    run = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--max_shard_size" in run.stdout and "exit codes" in run.stdout, run.stderr


# ------------------------------------------------------------------------------------------------ one home
def test_auto_map_written_by_save_pretrained_and_converter_agree(converted, tmp_path):
    from transformers_parrot.tiny import tiny_model

    _, result = converted
    model, _ = tiny_model()
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["auto_map"]
    assert json.loads((result.output / "config.json").read_text())["auto_map"] == saved
    assert saved["AutoModelForVision2Seq"] == "modeling_parrot.ParrotForConditionalGeneration"


def test_card_model_index_is_the_evaluators():
    """A results.json goes through parrot-eval's own model-index builder: the card's eval results equal those of
    the model_index.json parrot-eval writes for the same results."""
    from transformers_parrot.benchmark_specs import HUB_DATASET_REPO
    from transformers_parrot.evaluation.report import model_index
    from transformers_parrot.modelcard import eval_results_from

    results = {
        "mmmb": {"en": {"overall": 70.0}, "zh": {"overall": 68.126}},
        "mmbench": {"ar": {"overall": 57.82, "circular": True}},
        "my_bench": {"test": 12.5},
    }
    from_results = eval_results_from(results, "m")
    canonical = {**results, "my_bench": {"test": {"overall": 12.5}}}
    assert from_results == eval_results_from(model_index(canonical, "m"), "m")
    assert {e.dataset_type for e in from_results} == {HUB_DATASET_REPO, "my_bench"}
    assert eval_results_from({"MMMB": {"cn": 68.13}}, "m")[0].dataset_split == "zh"  # file code "cn" → ISO "zh"
    with pytest.raises(ValueError, match="no 'overall'"):
        eval_results_from({"mmmb": {"en": {"accuracy": 1.0}}}, "m")


# ------------------------------------------------------------------------------------------------ model card
def test_model_card_parses_back(converted, tmp_path):
    from huggingface_hub import ModelCard

    from transformers_parrot.modelcard import build_model_card

    _, result = converted
    card = ModelCard.load(result.output / "README.md")
    assert card.data.language == ["en", "zh", "pt", "ar", "tr", "ru"]
    assert card.data.license == "apache-2.0"  # carried from the input's card
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"
    for snippet in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", 'pipeline("image-text-to-text"'):
        assert snippet in card.text

    results = {
        "mmmb": {"en": {"overall": 70.0}, "cn": {"overall": 68.13}},
        "mmbench": {"ar": {"overall": 57.82, "circular": True}},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    bases = ["Qwen/Qwen1.5-7B-Chat", "openai/clip-vit-large-patch14-336"]
    built = build_model_card(
        result.config,
        model_name="Parrot-7B-hf",
        repo_id="me/Parrot-7B-hf",
        license="apache-2.0",
        base_models=bases,
        results=path,
        converted_from="AIDC-AI/Parrot-7B",
    )
    built.save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == bases
    assert card.data.model_name == "Parrot-7B-hf" and len(card.data.eval_results) == 3
    assert {e.dataset_name for e in card.data.eval_results} == {"MMMB (en)", "MMMB (zh)", "MMBench (ar)"}
    assert "me/Parrot-7B-hf" in card.text and "AIDC-AI/Parrot-7B" in card.text

    # the evaluator's model_index.json fragment works too (and recipe cards: training text, no conversion)
    fragment = {
        "model-index": [
            {
                "name": "Parrot-7B-hf",
                "results": [
                    {
                        "task": {"type": "visual-question-answering"},
                        "dataset": {
                            "name": "MMMB (en)",
                            "type": "AIDC-AI/Parrot-dataset",
                            "config": "mmmb",
                            "split": "en",
                        },
                        "metrics": [{"type": "accuracy", "value": 70.0}],
                    }
                ],
            }
        ]
    }
    card = build_model_card(result.config, model_name="my-parrot", results=fragment, training="Stage 2, 1 epoch.")
    parsed = ModelCard(str(card))
    assert parsed.data.eval_results[0].metric_value == 70.0 and "## Training" in parsed.text
