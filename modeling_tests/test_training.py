"""Training recipes on TRL (issue 4): tiny model, offline, CPU.

Every recipe runs a few optimizer steps through the real TRL trainer via the example scripts themselves
(examples/train_*.py: their parser and `main`), with a `RouterProbe` inside the trainer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("datasets")

from PIL import Image  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from transformers_parrot import (  # noqa: E402
    ParrotForConditionalGeneration,
    ParrotPreTrainedModel,
    ParrotProcessor,
)
from transformers_parrot.assets.build_tiny_tokenizer import write_tokenizer  # noqa: E402
from transformers_parrot.models.parrot._compat import CHECKPOINTING_ARG  # noqa: E402
from transformers_parrot.tiny import TINY_VISION_CONFIG  # noqa: E402
from transformers_parrot.training import (  # noqa: E402
    DataReport,
    ParrotDataError,
    RouterProbe,
    build_parrot_from_pretrained,
    check_max_length,
    load_llava_json,
    merge_adapter_checkpoint,
    merge_lora,
    mix_datasets,
)

REPO = Path(__file__).resolve().parents[1]
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)
COMMON = [
    "--bf16",
    "False",
    "--use_cpu",
    "True",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    f"--{CHECKPOINTING_ARG}",
    "False",
    "--per_device_train_batch_size",
    "2",
    "--dataloader_num_workers",
    "0",
    "--seed",
    "0",
    "--disable_tqdm",
    "True",
]


# ---------------------------------------------------------------------------------------------- fixtures
def _write_image(path: Path, seed: int, size=(24, 18)) -> str:
    rng = np.random.RandomState(seed)
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return path.name


def _write_parts(root: Path, spare_rows: int = 8) -> tuple[Path, Path]:
    """A tiny CLIP vision checkpoint and a tiny Qwen2 chat LLM whose tokenizer has no <image> (as Qwen's)."""
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    vision_dir, llm_dir = root / "clip", root / "qwen"
    vision = {k: v for k, v in TINY_VISION_CONFIG.items() if k != "model_type"}
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(vision_dir)
    write_tokenizer(llm_dir, with_image_token=False)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + spare_rows,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        **TINY_TEXT,
    )
    torch.manual_seed(2)
    Qwen2ForCausalLM(config).save_pretrained(llm_dir)
    return vision_dir, llm_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    images = root / "images"
    images.mkdir()
    names = [_write_image(images / f"img{i}.png", i) for i in range(2)]
    vision_dir, llm_dir = _write_parts(root)
    # LLaVA JSON of the release: relative image paths, text-only entries without "image"
    visual = [
        {
            "id": "v0",
            "image": names[0],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour dominates?"},
                {"from": "gpt", "value": "Red and blue."},
            ],
        },
        {
            "id": "v1",
            "image": names[1],
            "conversations": [
                {"from": "human", "value": "Describe it.\n<image>"},
                {"from": "gpt", "value": "Noise in green."},
            ],
        },
    ]
    text = [
        {
            "id": "t0",
            "conversations": [
                {"from": "human", "value": "Say hello in Turkish."},
                {"from": "gpt", "value": "Merhaba."},
            ],
        },
        {
            "id": "t1",
            "conversations": [
                {"from": "human", "value": "Count to three."},
                {"from": "gpt", "value": "One, two, three."},
            ],
        },
    ]
    (root / "visual.json").write_text(json.dumps(visual * 4))
    (root / "text.json").write_text(json.dumps(text * 4))
    (root / "mixed.json").write_text(json.dumps((visual + text) * 2))
    prefs = [
        {
            "id": f"p{i}",
            "image": names[i % 2],
            "prompt": "<image>\nWhat is shown?",
            "chosen": "A noisy picture.",
            "rejected": "A cat on a sofa.",
        }
        for i in range(4)
    ]
    (root / "prefs.jsonl").write_text("\n".join(json.dumps(p) for p in prefs))
    # a stage-1 checkpoint assembled from the parts: the starting point of stage 2, MLAN and DPO
    model, processor = build_parrot_from_pretrained(vision_dir, llm_dir, num_experts=4, moe_intermediate_size=32)
    with torch.no_grad():  # a visible router, as in tiny_model
        model.model.moe.gate.weight.normal_(0.0, 1.0)
    model.save_pretrained(root / "parrot")
    processor.save_pretrained(root / "parrot")
    return root


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_state(workdir):
    return _state(ParrotForConditionalGeneration.from_pretrained(workdir / "parrot"))


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def load_example(name: str):
    """examples/<name>.py as a module (its `make_parser` and `main`)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, argv: list[str], callbacks: list | None = None):
    """Parse `argv` with the example's parser and run its `main`, as `python examples/<name>.py ARGV` does."""
    example = load_example(name)
    return example.main(*example.make_parser().parse_args_and_config(argv), callbacks=callbacks)


class ProbeCallback(TrainerCallback):
    """A `RouterProbe` on the trainer's model for the whole run."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.probe = RouterProbe(model)

    def on_train_end(self, args, state, control, **kwargs):
        self.probe.remove()


def _run(name, argv):
    callback = ProbeCallback()
    trainer = run_example(name, argv, callbacks=[callback])
    return trainer, callback.probe


def _assert_frozen_and_trained(before, after, frozen_prefixes, trained_prefixes):
    for name, value in before.items():
        if name.startswith(frozen_prefixes):
            assert torch.equal(value, after[name]), f"{name} changed but must stay frozen"
    for prefix in trained_prefixes:
        changed = [n for n in before if n.startswith(prefix) and not torch.equal(before[n], after[n])]
        assert changed, f"no parameter under {prefix} changed"


# ---------------------------------------------------------------------------------------------- builder
def test_build_from_pretrained_parts(tmp_path):
    vision_dir, llm_dir = _write_parts(tmp_path, spare_rows=8)
    model, processor = build_parrot_from_pretrained(vision_dir, llm_dir)
    from transformers import AutoModelForCausalLM

    from transformers_parrot.models.parrot._compat import use_kernels_kwargs

    llm = AutoModelForCausalLM.from_pretrained(llm_dir, **use_kernels_kwargs())  # transformers 5.25+ without kernels
    assert processor.image_token_id == len(processor.tokenizer) - 1
    assert model.config.use_moe is False  # ready for stage 1
    assert model.get_input_embeddings().weight.shape[0] == llm.get_input_embeddings().weight.shape[0]  # spare row
    assert torch.equal(model.lm_head.weight, llm.lm_head.weight)
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    assert model.config.image_seq_length == processor.image_seq_length == 10
    out = model(**processor(images=[Image.new("RGB", (9, 7))], text="<image>\nhi", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()
    # no spare row: the embeddings grow by the new token only
    vision_dir2, llm_dir2 = _write_parts(tmp_path / "exact", spare_rows=0)
    model2, processor2 = build_parrot_from_pretrained(vision_dir2, llm_dir2)
    assert model2.get_input_embeddings().weight.shape[0] == len(processor2.tokenizer)


# ---------------------------------------------------------------------------------------------- recipes
def test_stage1(workdir, tmp_path):
    """Stage 1 straight from the parts (--vision_model + --llm_model), as a user starts."""
    before = _state(build_parrot_from_pretrained(workdir / "clip", workdir / "qwen")[0])
    argv = [
        "--stage",
        "1",
        "--vision_model",
        str(workdir / "clip"),
        "--llm_model",
        str(workdir / "qwen"),
        "--datasets",
        str(workdir / "visual.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "6",
        *COMMON,
    ]
    trainer = run_example("train_sft", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    assert trainer.model.config.use_moe is False
    after = _state(trainer.model)
    _assert_frozen_and_trained(
        before,
        after,
        ("model.vision_tower.", "model.moe.", "model.language_model.", "lm_head."),
        ("model.multi_modal_projector.",),
    )
    assert trainer.args.learning_rate == 1e-3 and trainer.args.lr_scheduler_type == "cosine"


def test_stage1_from_scratch_trains_llm_and_vision(workdir, tmp_path):
    """`--train_llm --train_vision` (parrot-demo's stage 1, nothing pretrained): everything but the MoE trains."""
    before = _load_state(workdir)
    argv = [
        "--stage",
        "1",
        "--train_llm",
        "True",
        "--train_vision",
        "True",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "visual.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "3",
        *COMMON,
    ]
    trainer = run_example("train_sft", argv)
    assert trainer.model.config.use_moe is False
    _assert_frozen_and_trained(
        before,
        _state(trainer.model),
        ("model.moe.",),
        ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."),
    )


def test_stage2_full_separate_lr_and_router(workdir, tmp_path):
    before = _load_state(workdir)
    argv = [
        "--stage",
        "2",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "mixed.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "5",
        "--learning_rate",
        "1e-3",
        "--multimodal_lr",
        "5e-3",
        "--router_lr",
        "2e-2",
        *COMMON,
    ]
    trainer, probe = _run("train_sft", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    after = _state(trainer.model)
    _assert_frozen_and_trained(
        before,
        after,
        ("model.vision_tower.",),
        ("model.multi_modal_projector.", "model.moe.", "model.language_model.", "lm_head."),
    )
    lrs = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    assert lrs == [1e-3, 5e-3, 2e-2]
    router = [group["params"] for group in trainer.optimizer.param_groups if group["initial_lr"] == 2e-2]
    assert [p for params in router for p in params] == [trainer.model.model.moe.gate.weight]
    assert probe.pairs and probe.max_abs_diff() < 1e-5


def test_stage2_frozen_llm_trains_vision_projector_and_moe(workdir, tmp_path):
    """`--train_llm False --train_vision True` in stage 2 (parrot-demo's stage 2): the LLM, embeddings and LM head
    stay exactly as loaded, so only the vision tower, projector and MoE can adapt the visual tokens."""
    before = _load_state(workdir)
    argv = [
        "--stage",
        "2",
        "--train_llm",
        "False",
        "--train_vision",
        "True",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "visual.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-3",
        *COMMON,
    ]
    trainer = run_example("train_sft", argv)
    assert trainer.model.config.use_moe is True
    _assert_frozen_and_trained(
        before,
        _state(trainer.model),
        ("model.language_model.", "lm_head."),
        ("model.vision_tower.", "model.multi_modal_projector.", "model.moe."),
    )


@pytest.mark.parametrize("stage_args", [["--stage", "1"], ["--stage", "2", "--train_llm", "False"]])
def test_frozen_llm_refuses_text_only_samples(workdir, tmp_path, stage_args):
    """With the LLM frozen a text-only sample trains nothing (and a batch of them is an autograd error mid-run):
    refused before training, with the count."""
    n_text = sum(1 for s in json.loads((workdir / "mixed.json").read_text()) if not s.get("image"))
    n_all = len(json.loads((workdir / "mixed.json").read_text()))
    assert 0 < n_text < n_all
    argv = [
        *stage_args,
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "mixed.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        *COMMON,
    ]
    with pytest.raises(
        ValueError,
        match=f"{n_text} of {n_all} training samples have no image, but the LLM is "
        r"frozen .* --train_llm True",
    ):
        run_example("train_sft", argv)


def test_frozen_llm_with_lora_is_refused(workdir, tmp_path):
    argv = [
        "--stage",
        "2",
        "--train_llm",
        "False",
        "--use_peft",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "visual.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        *COMMON,
    ]
    with pytest.raises(ValueError, match="--use_peft adapts the LLM with LoRA and --train_llm False freezes it"):
        run_example("train_sft", argv)


def test_stage2_lora_merge(workdir, tmp_path, caplog):
    before = _load_state(workdir)
    argv = [
        "--stage",
        "2",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "visual.json"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "5",
        "--learning_rate",
        "5e-3",
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_dropout",
        "0.0",
        *COMMON,
    ]
    trainer, probe = _run("train_sft", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    assert probe.pairs and probe.max_abs_diff() < 1e-5
    peft_model = trainer.model
    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    batch = processor.apply_chat_template(
        [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": Image.open(workdir / "images/img0.png")},
                        {"type": "text", "text": "What colour?"},
                    ],
                }
            ]
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(**batch).logits
    # the plain checkpoint the script saved loads like any other and gives the same logits
    merged = ParrotForConditionalGeneration.from_pretrained(tmp_path / "out" / "merged").eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, unmerged, atol=1e-5, rtol=1e-5)
    after = _state(merged)
    assert set(after) == set(before)  # no LoRA/PEFT leftovers in the merged checkpoint
    _assert_frozen_and_trained(
        before,
        after,
        ("model.vision_tower.",),
        ("model.multi_modal_projector.", "model.moe.", "model.language_model.layers."),
    )
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):  # not LoRA targets
        assert torch.equal(before[name], after[name])
    assert not any(
        isinstance(m, torch.nn.Module) and "lora" in type(m).__name__.lower() for m in merge_lora(peft_model).modules()
    )

    # merging later from the saved adapter gives the run's own merged model: the config the recipe changed
    # (use_moe on; the stage-1 base has it off) is saved with the adapter, not taken from the base
    from transformers_parrot.routing import routing_weights

    assert ParrotForConditionalGeneration.from_pretrained(workdir / "parrot").config.use_moe is False
    later = merge_adapter_checkpoint(workdir / "parrot", tmp_path / "out", tmp_path / "later").eval()
    reloaded = ParrotForConditionalGeneration.from_pretrained(tmp_path / "later").eval()

    def config_dict(model):
        return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}

    assert reloaded.config.use_moe is True
    assert config_dict(later) == config_dict(reloaded) == config_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, merged_logits, atol=0, rtol=0)
    image = Image.open(workdir / "images/img0.png")
    weights = routing_weights(reloaded, ParrotProcessor.from_pretrained(tmp_path / "later"), [image], ["What colour?"])
    torch.testing.assert_close(weights, routing_weights(merged, processor, [image], ["What colour?"]))

    # an adapter folder saved without the config (older versions) gets the stage-2 recipe's changes, with a warning
    import shutil

    legacy = tmp_path / "legacy-adapter"
    shutil.copytree(tmp_path / "out", legacy, ignore=shutil.ignore_patterns("merged", "config.json"))
    with caplog.at_level("WARNING"):
        legacy_merged = merge_adapter_checkpoint(workdir / "parrot", legacy, tmp_path / "legacy-merged").eval()
    assert "no config.json" in caplog.text and legacy_merged.config.use_moe is True
    with torch.no_grad():
        torch.testing.assert_close(legacy_merged(**batch).logits, merged_logits, atol=0, rtol=0)


@pytest.mark.parametrize("visual_ratio", [0.0, 0.5])
def test_mlan(workdir, tmp_path, visual_ratio):
    before = _load_state(workdir)
    argv = [
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--text_datasets",
        str(workdir / "text.json"),
        "--visual_datasets",
        str(workdir / "visual.json"),
        "--visual_ratio",
        str(visual_ratio),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "6",
        "--learning_rate",
        "1e-3",
        "--per_device_train_batch_size",
        "4",
        *COMMON,
    ]
    trainer, probe = _run("train_mlan", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    after = _state(trainer.model)
    _assert_frozen_and_trained(before, after, ("model.vision_tower.",), ("model.language_model.", "lm_head."))
    if visual_ratio:
        assert probe.pairs and probe.max_abs_diff() < 1e-5  # mixed batches routed like generation
    else:
        assert not probe.pairs  # text only: the MoE never ran
        for prefix in ("model.moe.", "model.multi_modal_projector."):
            assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(prefix))


def test_mixed_batch_collation(workdir):
    """TRL's vision collator on a batch where some rows have no image."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    dataset = load_llava_json(workdir / "mixed.json", workdir / "images")
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=2048, assistant_only_loss=True)
    batch = collator([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 2
    image_rows = (batch["input_ids"] == processor.image_token_id).any(-1).tolist()
    assert image_rows == [True, True, False, False]
    # loss only on answers: every labelled token lies after an assistant header
    for row in range(4):
        text = processor.decode(batch["input_ids"][row][batch["labels"][row] != -100])
        assert text.endswith("<|im_end|>") and "user" not in text and "<image>" not in text


@pytest.mark.parametrize("use_peft", [False, True])
def test_dpo(workdir, tmp_path, use_peft):
    before = _load_state(workdir)
    argv = [
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "prefs.jsonl"),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "4",
        "--learning_rate",
        "5e-3",
        "--beta",
        "0.5",
        *COMMON,
    ]
    if use_peft:
        argv += ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]
    trainer, probe = _run("train_dpo", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    assert probe.pairs and probe.max_abs_diff() < 1e-5
    model = merge_lora(trainer.model) if use_peft else trainer.model
    after = _state(model)
    _assert_frozen_and_trained(before, after, ("model.vision_tower.",), ("model.language_model.layers.",))
    if not use_peft:  # the explicit reference model stays the starting point
        ref = _state(trainer.ref_model)
        assert all(torch.equal(before[n], ref[n]) for n in before)


def test_resume_from_checkpoint(workdir, tmp_path):
    base = [
        "--stage",
        "2",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(workdir / "mixed.json"),
        "--image_folders",
        str(workdir / "images"),
        "--max_steps",
        "4",
        "--learning_rate",
        "1e-3",
        *COMMON,
    ]
    base[base.index("--save_strategy") + 1] = "steps"
    full = run_example("train_sft", base + ["--output_dir", str(tmp_path / "full"), "--save_steps", "2"])
    assert (tmp_path / "full" / "checkpoint-2").is_dir()
    executed = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            executed.append(state.global_step)

    resumed = run_example(
        "train_sft",
        base
        + [
            "--output_dir",
            str(tmp_path / "resumed"),
            "--save_steps",
            "2",
            "--resume_from_checkpoint",
            str(tmp_path / "full" / "checkpoint-2"),
        ],
        callbacks=[Steps()],
    )
    assert executed == [3, 4]  # continued where it stopped
    full_losses = {e["step"]: e["loss"] for e in full.state.log_history if "loss" in e}
    resumed_losses = {e["step"]: e["loss"] for e in resumed.state.log_history if "loss" in e}
    assert resumed_losses == pytest.approx(full_losses)
    full_state, resumed_state = _state(full.model), _state(resumed.model)
    for name in full_state:
        torch.testing.assert_close(resumed_state[name], full_state[name], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- data
def _llava(tmp_path, entries):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))
    return path


GOOD = {"id": "ok", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
TAGGED = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "hello"}]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"id": "missing", "image": "nope.png", "conversations": TAGGED}, "image file not found: .*nope.png"),
        ({"id": "broken", "image": "broken.png", "conversations": TAGGED}, "unreadable image .*broken.png"),
        (
            {"id": "role", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
            "unknown \"from\" role 'robot'",
        ),
        ({"id": "empty", "conversations": []}, "empty conversation"),
        (
            {
                "id": "count",
                "image": "ok.png",
                "conversations": [{"from": "human", "value": "<image>\n<image>\nx"}, {"from": "gpt", "value": "y"}],
            },
            "2 <image> tag",
        ),
        (
            {
                "id": "notag",
                "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}],
            },
            "1 <image> tag.*0 image",
        ),
        ({"id": "untagged", "image": "ok.png", "conversations": GOOD["conversations"]}, "0 <image> tag.*1 image"),
    ],
)
def test_bad_data_raise_and_skip(tmp_path, bad, message):
    _write_image(tmp_path / "ok.png", 0)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    path = _llava(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(ParrotDataError, match=rf"sample '{bad['id']}' \(#1\).*{message}"):
        load_llava_json(path, tmp_path)
    report = DataReport()
    dataset = load_llava_json(path, tmp_path, on_error="skip", report=report)
    assert len(dataset) == 2 and report.num_skipped == 1 and report.read == 3
    assert bad["id"] in report.examples[0]
    streamed = list(load_llava_json(path, tmp_path, on_error="skip", streaming=True))
    assert len(streamed) == 2


def test_skipped_samples_are_counted_on_stdout(workdir, tmp_path, capsys):
    """`--on_bad_sample skip` drops a bad sample (here an image without an `<image>` tag) and the script prints the
    counts without any logging set up."""
    visual = json.loads((workdir / "visual.json").read_text())[:2]
    untagged = {
        "id": "untagged",
        "image": visual[0]["image"],
        "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "Noise."}],
    }
    data = _llava(tmp_path, [*visual, untagged])
    argv = [
        "--stage",
        "2",
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--datasets",
        str(data),
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        *COMMON,
    ]
    with pytest.raises(ParrotDataError, match=r"sample 'untagged' \(#2\): 0 <image> tag"):
        run_example("train_sft", argv)
    capsys.readouterr()
    run_example("train_sft", [*argv, "--on_bad_sample", "skip"])
    assert "training data: read 3, kept 2, skipped 1 (format: 1)" in capsys.readouterr().out


def test_paper_defaults_through_trl_parser(tmp_path):
    """Unset flags follow the paper, set ones (command line or --config YAML) win, and neither checkpointing name
    triggers transformers' deprecation warning unless the user passes the old one."""
    sft, dpo = load_example("train_sft").make_parser(), load_example("train_dpo").make_parser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, args, _ = sft.parse_args_and_config(["--output_dir", str(tmp_path)])
        _, dpo_args, _ = dpo.parse_args_and_config(["--output_dir", str(tmp_path)])
    assert args.learning_rate is None  # filled with the stage's rate by prepare_stage (test_stage1: 1e-3)
    assert (args.lr_scheduler_type, args.warmup_steps, args.num_train_epochs, args.max_length) == (
        "cosine",
        0.03,
        1.0,
        2048,
    )
    assert getattr(args, CHECKPOINTING_ARG) is True and args.assistant_only_loss and args.bf16 is False
    assert (dpo_args.learning_rate, dpo_args.max_length, getattr(dpo_args, CHECKPOINTING_ARG)) == (5e-7, 2048, True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"learning_rate: 0.0003\nnum_train_epochs: 2\n{CHECKPOINTING_ARG}: false\n")
    _, args, _ = sft.parse_args_and_config(
        ["--config", str(recipe), "--output_dir", str(tmp_path), "--num_train_epochs", "3"]
    )
    assert (args.learning_rate, args.num_train_epochs, getattr(args, CHECKPOINTING_ARG)) == (3e-4, 3.0, False)
    sft = load_example("train_sft").make_parser()  # a parser keeps the defaults of the --config file it read
    if CHECKPOINTING_ARG == "activation_checkpointing":  # the old name still works (with transformers' warning)
        with pytest.warns(FutureWarning, match="gradient_checkpointing"):
            _, args, _ = sft.parse_args_and_config(
                ["--output_dir", str(tmp_path), "--gradient_checkpointing", "False"]
            )
        assert args.activation_checkpointing is False
    with pytest.raises(ValueError, match="packing"):
        sft.parse_args_and_config(["--output_dir", str(tmp_path), "--packing", "True"])


def test_llava_conversion_and_mixing(workdir):
    dataset = load_llava_json(workdir / "mixed.json", workdir / "images")
    row = dataset[1]  # "Describe it.\n<image>": image first, tag and newline removed from the text
    assert row["messages"][0]["content"][0]["type"] == "image"
    assert row["messages"][0]["content"][1]["text"] == "Describe it."
    assert isinstance(row["images"][0], Image.Image)
    assert dataset[2]["images"] == []
    text = load_llava_json(workdir / "text.json")
    visual = load_llava_json(workdir / "visual.json", workdir / "images")
    mixed = mix_datasets([text, visual], [0.75, 0.25], seed=0, stopping_strategy="first_exhausted")
    ids = [r["id"] for r in mixed]
    assert sum(i.startswith("t") for i in ids) > sum(i.startswith("v") for i in ids)
    streamed = mix_datasets([text.to_iterable_dataset(), visual.to_iterable_dataset()], [0.5, 0.5], seed=0)
    assert len(list(streamed)) >= 16


def test_max_length_never_cuts_images():
    check_max_length(None, 577)
    check_max_length(2048, 577, max_images=2)
    with pytest.raises(ValueError, match="max_length=1024 cannot hold 2 image"):
        check_max_length(1024, 577, max_images=2)


# ---------------------------------------------------------------------------------------------- distributed
def _free_port() -> str:
    import socket

    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _torchrun(worker: str, argv: list[str]) -> None:
    """Run modeling_tests/<worker> in 2 CPU processes (gloo) and fail with its stderr if it fails."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        _free_port(),
        str(REPO / "modeling_tests" / worker),
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _run_two_processes(workdir, out: Path, extra: list[str]) -> tuple[dict, dict]:
    _torchrun(
        "ddp_sft_worker.py",
        [
            "--stage",
            "2",
            "--model_name_or_path",
            str(workdir / "parrot"),
            "--datasets",
            str(workdir / "mixed.json"),
            "--image_folders",
            str(workdir / "images"),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--learning_rate",
            "1e-3",
            *COMMON,
            *extra,
        ],
    )
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["global_step"] == rank1["global_step"] == 3
    return rank0, rank1


def test_two_process_ddp(workdir, tmp_path):
    """Strict DDP (no unused-parameter search, as with gradient checkpointing) on mixed visual/text-only data with
    one sample per rank, so some steps give one rank an image and the other none."""
    rank0, rank1 = _run_two_processes(
        workdir, tmp_path / "ddp", ["--ddp_find_unused_parameters", "False", "--per_device_train_batch_size", "1"]
    )
    assert rank0["mixed_steps"] == rank1["mixed_steps"] > 0
    before = _load_state(workdir)
    changed = False
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
        changed |= not torch.equal(value, before[name])
    assert changed


def test_fsdp2_wraps_no_split_modules_and_survives_mixed_modality_ranks(workdir, tmp_path):
    """FSDP2 over `_no_split_modules` (CPU, gloo) with an image sample on rank 0 and a text-only one on rank 1:
    no rank waits on an all-gather the other never issues, every block is its own FSDP unit, and the sharded
    run ends at the weights of one process averaging the two samples' gradients (an independent computation)."""
    from fsdp2_worker import LR, STEPS, rank_batches

    _torchrun("fsdp2_worker.py", [str(workdir / "parrot"), str(tmp_path)])
    fsdp = torch.load(tmp_path / "fsdp2.pt")

    model = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot", use_moe=True)
    expected = sorted(type(m).__name__ for m in model.modules() if type(m).__name__ in model._no_split_modules)
    assert {"ParrotMultilingualMoE", "Qwen2DecoderLayer", "CLIPEncoderLayer"} <= set(expected)
    assert fsdp["wrapped"] == sorted([*expected, "ParrotForConditionalGeneration"])

    batches = rank_batches(ParrotProcessor.from_pretrained(workdir / "parrot"))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        losses = [model(**b, labels=b["input_ids"]).loss for b in batches]
        (sum(losses) / len(losses)).backward()
        optimizer.step()
        optimizer.zero_grad()
        for rank, loss in enumerate(losses):
            assert math.isclose(loss.item(), fsdp["losses"][rank][step], rel_tol=1e-5), (rank, step)
    reference = model.state_dict()
    assert set(fsdp["state"]) == set(reference)
    for name, value in fsdp["state"].items():
        torch.testing.assert_close(
            value, reference[name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    before = _load_state(workdir)
    changed = [n for n in reference if not torch.equal(reference[n], before[n])]
    assert any(n.startswith("model.moe.") for n in changed) and any("language_model" in n for n in changed)


def test_router_probe_catches_answer_leak(workdir, monkeypatch):
    """Negative control: a model whose router also sees the answer is caught by the probe."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from transformers_parrot.models.parrot.modeling_parrot import ParrotModel

    model = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot")
    model.config.use_moe = True
    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=None, assistant_only_loss=True)
    batch = collator([load_llava_json(workdir / "visual.json", workdir / "images")[0]])
    probe = RouterProbe(model)
    model(**batch)
    assert probe.max_abs_diff() < 1e-6
    leaky = lambda self, input_ids, embeds, attention_mask, image_mask: ~image_mask  # noqa: E731
    monkeypatch.setattr(ParrotModel, "get_guidance_mask", leaky)
    probe.pairs.clear()
    model(**batch)
    assert probe.max_abs_diff() > 1e-3
    probe.remove()


def test_accelerate_configs():
    import yaml

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "examples" / "accelerate").glob("*.yaml")}
    assert set(configs) >= {"ddp", "zero2", "zero3", "fsdp2"}
    assert configs["zero2"]["deepspeed_config"]["zero_stage"] == 2
    assert configs["zero3"]["deepspeed_config"]["zero_stage"] == 3
    fsdp = configs["fsdp2"]["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == ParrotPreTrainedModel._no_split_modules


def test_compact_lm_head_matches_trls_fused_head(workdir):
    """On CPU our trainers score only the labelled positions (`training.lm_head`); every field TRL's own fused head
    returns, the loss and the gradients must be the same, with and without `num_items_in_batch` / `shift_labels`."""
    import copy

    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from transformers_parrot.training.lm_head import use_compact_lm_head

    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    model = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot").train()
    dataset = load_llava_json(workdir / "mixed.json", workdir / "images")
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=2048, assistant_only_loss=True)
    batch = collator([dataset[i] for i in range(4)])  # two rows with an image, two text-only
    fields = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    assert not use_compact_lm_head(model)  # no fused head installed: nothing to wrap
    reference, compact = model, copy.deepcopy(model)
    for m in (reference, compact):
        add_fused_lm_head(m, outputs=fields)
    assert use_compact_lm_head(compact)

    shift = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], -100)], 1)
    for extra in (
        {"labels": batch["labels"]},
        {"labels": batch["labels"], "num_items_in_batch": 7},
        {"shift_labels": shift},
    ):
        outputs = []
        for m in (reference, compact):
            m.zero_grad()
            out = m(**{k: v for k, v in batch.items() if k != "labels"}, **extra, fused_lm_head=True)
            (out.loss + out.entropy.sum() * 0.1).backward()
            outputs.append((out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        (ref, ref_grads), (ours, our_grads) = outputs
        assert torch.equal(ref.label_mask, ours.label_mask) and ref.label_mask.sum() > 0
        torch.testing.assert_close(ours.loss, ref.loss, rtol=1e-5, atol=1e-6)
        for name in fields:
            torch.testing.assert_close(
                getattr(ours, name).float(), getattr(ref, name).float(), rtol=1e-4, atol=1e-5, msg=name
            )
        assert ref_grads.keys() == our_grads.keys() and any("vision_tower" in n for n in ref_grads)
        for name in ref_grads:
            torch.testing.assert_close(our_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # without fused_lm_head the model's own forward runs: logits and the transformers loss
    plain = compact(**batch)
    assert plain.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(plain.loss)


@pytest.mark.parametrize("recipe", ["train_sft", "train_dpo"])
def test_trainers_use_the_compact_lm_head_on_cpu(workdir, tmp_path, monkeypatch, recipe):
    """On CPU no batch goes through TRL's tiled head (the policy's and DPO's reference model's)."""
    from trl.trainer import utils as trl_utils

    def refuse(*args, **kwargs):
        raise AssertionError("TRL's tiled LM head ran on CPU")

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", refuse)
    data = ["--datasets", str(workdir / ("mixed.json" if recipe == "train_sft" else "prefs.jsonl"))]
    argv = [
        "--model_name_or_path",
        str(workdir / "parrot"),
        *data,
        "--image_folders",
        str(workdir / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        *COMMON,
    ]
    trainer, _ = _run(recipe, (["--stage", "2"] if recipe == "train_sft" else []) + argv)
    assert all(math.isfinite(x) for x in _losses(trainer))
