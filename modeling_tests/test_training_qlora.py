"""QLoRA in the training recipes (bitsandbytes' CPU backend): a k-bit LLM prepared for training, LoRA on it, the
projector and MoE trained in full precision, the adapter merged onto the unquantized base.

The model is `tiny_model(quantizable=True)`: every quantized (LLM) linear layer is a multiple of bitsandbytes'
64-column blocks wide.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("datasets")
pytest.importorskip("bitsandbytes")

from PIL import Image  # noqa: E402
from test_training import load_example  # noqa: E402

from transformers_parrot import ParrotForConditionalGeneration, ParrotProcessor  # noqa: E402
from transformers_parrot.models.parrot._compat import CHECKPOINTING_ARG  # noqa: E402
from transformers_parrot.tiny import tiny_model  # noqa: E402
from transformers_parrot.training.recipes import keep_modules_to_save_dtype  # noqa: E402

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
LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0", "--dtype", "float32"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qlora")
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        Image.fromarray((rng.rand(30, 30, 3) * 255).astype("uint8")).save(root / "images" / f"img{i}.png")
    visual = [
        {
            "id": "v0",
            "image": "img0.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour dominates?"},
                {"from": "gpt", "value": "Red and blue."},
            ],
        },
        {
            "id": "v1",
            "image": "img1.png",
            "conversations": [
                {"from": "human", "value": "<image>\nBu ne?"},
                {"from": "gpt", "value": "Yeşil gürültü."},
            ],
        },
    ]
    (root / "visual.json").write_text(json.dumps(visual * 4))
    prefs = [
        {
            "id": f"p{i}",
            "image": f"img{i % 2}.png",
            "prompt": "<image>\nWhat is shown?",
            "chosen": "A noisy picture.",
            "rejected": "A cat on a sofa.",
        }
        for i in range(4)
    ]
    (root / "prefs.jsonl").write_text("\n".join(json.dumps(p) for p in prefs))
    model, processor = tiny_model(seed=0, quantizable=True)
    model.save_pretrained(root / "parrot")
    processor.save_pretrained(root / "parrot")
    return root


def _run(name: str, argv: list[str]):
    example = load_example(name)
    return example.main(*example.make_parser().parse_args_and_config(argv))


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _batch(workdir):
    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.open(workdir / "images/img0.png")},
                {"type": "text", "text": "What colour dominates?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Red and blue."}]},
    ]
    return processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")


def _quantized_linears(model) -> dict[str, str]:
    import bitsandbytes as bnb

    return {
        name: type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    }


def _stage2_argv(workdir, out: Path, *extra: str) -> list[str]:
    """train_sft.py's arguments for 6 stage-2 steps on the visual samples, then `extra`."""
    data = ["--datasets", str(workdir / "visual.json"), "--image_folders", str(workdir / "images")]
    run = ["--output_dir", str(out), "--max_steps", "6", "--learning_rate", "5e-3"]
    return ["--stage", "2", "--model_name_or_path", str(workdir / "parrot"), *data, *run, *extra]


@pytest.mark.parametrize("bits", ["4", "8"])
def test_qlora_sft_trains_and_merges_unquantized(workdir, tmp_path, bits):
    from peft import PeftModel

    out = tmp_path / "out"
    trainer = _run("train_sft", _stage2_argv(workdir, out, *LORA, f"--load_in_{bits}bit", *COMMON))
    losses = _losses(trainer)
    assert losses[-1] < losses[0], losses

    # the LLM is quantized, the projector and MoE train as full-precision copies in the model's float32
    quantized = _quantized_linears(trainer.model)
    assert quantized and all(".language_model." in name for name in quantized), quantized
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    saved_copies = {n: p for n, p in trainable.items() if ".modules_to_save." in n}
    assert any(".moe." in n for n in saved_copies) and any(".multi_modal_projector." in n for n in saved_copies)
    assert all(p.dtype == torch.float32 for p in saved_copies.values())
    assert set(trainable) == set(saved_copies) | {n for n in trainable if ".lora_" in n}

    # <output_dir>/merged: a plain, unquantized checkpoint
    config = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config["use_moe"] is True
    merged = ParrotForConditionalGeneration.from_pretrained(out / "merged").eval()
    assert not _quantized_linears(merged) and merged.dtype == torch.float32
    assert not any("lora" in n or "modules_to_save" in n for n in merged.state_dict())

    # the trained model, computed on the unquantized base + the adapter without merging. Same weights: only the
    # order of the float32 sums differs (W x + B A x vs (W + B A) x), hence 1e-4 on logits of size ~1
    base = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot", use_moe=True)
    reference = PeftModel.from_pretrained(base, out).eval()
    batch = _batch(workdir)
    with torch.no_grad():
        expected = reference(**batch).logits
        got = merged(**batch).logits
        start = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot", use_moe=True).eval()
        start_loss = start(**batch, labels=batch["input_ids"]).loss
        merged_loss = merged(**batch, labels=batch["input_ids"]).loss
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert merged_loss < start_loss  # the merged model is the trained one, not the starting point


@pytest.mark.parametrize("autocast", ["True", "False"])
def test_qlora_sft_in_bf16(workdir, tmp_path, autocast):
    """`--dtype bfloat16` QLoRA (4-bit, bf16 matmuls) with and without the trainer's bf16 autocast: it trains, with
    the embeddings and lm_head in bf16 under autocast (float32 without: they meet float32 hidden states) and the
    trained projector + MoE copies in float32."""
    lora = [a if a != "float32" else "bfloat16" for a in LORA]
    extra = [*lora, "--load_in_4bit", "--merge_lora", "False", *COMMON[2:], "--bf16", autocast]
    trainer = _run("train_sft", _stage2_argv(workdir, tmp_path / "out", *extra))
    losses = _losses(trainer)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    model = trainer.model
    dtype = torch.bfloat16 if autocast == "True" else torch.float32
    assert model.get_input_embeddings().weight.dtype == model.get_output_embeddings().weight.dtype == dtype
    copies = [p for n, p in model.named_parameters() if ".modules_to_save." in n]
    assert copies and all(p.dtype == torch.float32 for p in copies)


def test_qlora_dpo_uses_the_adapter_disabled_reference(workdir, tmp_path):
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
        *LORA,
        "--load_in_4bit",
        "--merge_lora",
        "False",
        *COMMON,
    ]
    trainer = _run("train_dpo", argv)
    losses = _losses(trainer)
    assert losses[-1] < losses[0], losses
    assert trainer.ref_model is None  # TRL's reference: the policy with its adapters disabled
    assert _quantized_linears(trainer.model)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "merged").exists()


def test_modules_to_save_keep_their_dtype():
    """TRL casts every trainable parameter of a quantized model to bf16; the trained copies of projector + MoE are
    cast back to their frozen originals' dtype (else their float32 inputs fail the next matmul)."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_model(seed=0, quantizable=True)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["multi_modal_projector", "moe"])
    )
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)
    copies = [p for n, p in peft_model.named_parameters() if ".modules_to_save." in n]
    assert keep_modules_to_save_dtype(peft_model) == len(copies) > 0
    assert all(p.dtype == torch.float32 for p in copies)
    assert all(p.dtype == torch.bfloat16 for n, p in peft_model.named_parameters() if ".lora_" in n)
    assert keep_modules_to_save_dtype(peft_model) == 0


def test_kbit_preparation_keeps_embeddings_and_lm_head_in_bf16(workdir):
    """`prepare_kbit_model` is PEFT's k-bit preparation with the frozen embeddings and lm_head back in bf16: the
    logits under bf16 autocast of PEFT's all-float32 preparation up to bf16 rounding, with 2 bytes less per
    embedding and lm_head parameter; norms, vision tower, projector and MoE stay float32."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from transformers_parrot.training.scripts import prepare_kbit_model

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)

    def load():
        return ParrotForConditionalGeneration.from_pretrained(
            workdir / "parrot", dtype=torch.bfloat16, quantization_config=config, device_map="cpu", use_moe=True
        )

    peft_prepared, ours = load(), load()
    prepare_model_for_kbit_training(peft_prepared, use_gradient_checkpointing=False)
    embeddings = ours.get_input_embeddings().weight.numel() + ours.lm_head.weight.numel()
    assert prepare_kbit_model(ours) == embeddings
    assert ours.get_input_embeddings().weight.dtype == ours.lm_head.weight.dtype == torch.bfloat16
    for part in (ours.model.vision_tower, ours.model.multi_modal_projector, ours.model.moe):
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert all(p.dtype == torch.float32 for n, p in ours.named_parameters() if n.endswith("norm.weight"))
    assert not any(p.requires_grad for p in ours.parameters())

    def nbytes(model) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    assert nbytes(peft_prepared) - nbytes(ours) == 2 * embeddings
    batch = _batch(workdir)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = peft_prepared(**batch).logits.float()
        got = ours(**batch).logits.float()
    # the residual stream starts from bf16 instead of float32 embeddings (same values): the logits differ by bf16
    # rounding at most, one bf16 epsilon of their scale
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, atol=torch.finfo(torch.bfloat16).eps * scale.item(), rtol=0)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
