"""The checks of the training library, run through each example script's own parser: a combination of flags a
recipe cannot honour is refused by the library before anything is loaded, whichever script it reaches; library
steps never change the dataclasses they are given; the CPU LM head falls back to TRL's own when TRL changes."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("datasets")

from test_training import COMMON, load_example, run_example, workdir  # noqa: E402, F401  (workdir: a fixture)

from transformers_parrot import ParrotForConditionalGeneration, ParrotProcessor  # noqa: E402
from transformers_parrot.training import prepare_stage  # noqa: E402
from transformers_parrot.training.scripts import MODEL_CONFIG_FIELDS, check_model_args  # noqa: E402

EXAMPLES = {"train_sft": "sft", "train_mlan": "mlan", "train_dpo": "dpo"}
CKPT = ["--model_name_or_path", "no-such-checkpoint"]  # never loaded: every check runs first
REFUSED = [
    (CKPT + ["--load_in_4bit"], "--load_in_4bit: quantized weights cannot be trained; add --use_peft"),
    (CKPT + ["--load_in_8bit"], "--load_in_8bit: quantized weights cannot be trained; add --use_peft"),
    (CKPT + ["--use_peft", "--load_in_4bit", "--dtype", "auto"], "give --dtype bfloat16 or float32"),
    (
        ["--vision_model", "clip", "--llm_model", "qwen", "--use_peft", "--load_in_4bit"],
        "--load_in_4bit needs a Parrot checkpoint",
    ),
    (CKPT + ["--use_bnb_nested_quant", "True"], "--use_bnb_nested_quant configure 4-bit loading: add --load_in_4bit"),
    (
        CKPT + ["--use_peft", "--load_in_8bit", "--bnb_4bit_quant_type", "fp4"],
        "--bnb_4bit_quant_type configure 4-bit loading",
    ),
    (CKPT + ["--lora_r", "8"], "--lora_r configure LoRA: add --use_peft"),
    (CKPT + ["--use_peft", "--lora_task_type", "SEQ_CLS"], "Parrot trains as a causal LM"),
    (CKPT + ["--use_peft", "--train_vision", "True"], "--train_vision with --use_peft"),
    (CKPT + ["--use_peft", "--train_llm", "False"], "--use_peft adapts the LLM with LoRA and --train_llm False"),
    (CKPT + ["--trust_remote_code", "True"], "--trust_remote_code: a Parrot checkpoint loads with this package"),
    (CKPT + ["--vision_model", "clip", "--llm_model", "qwen"], "give one of them"),
    (["--vision_model", "clip"], "--vision_model and --llm_model go together"),
    (["--vision_model", "clip", "--llm_model", "qwen", "--model_revision", "v1"], "--model_revision applies to"),
    (CKPT + ["--model_init_kwargs", '{"low_cpu_mem_usage": true}'], "--model_init_kwargs: the scripts load"),
    ([], "pass --model_name_or_path"),
]
SFT_ONLY = [
    (CKPT + ["--stage", "1", "--use_peft", "--load_in_4bit"], "stage 1 trains only the projector; --use_peft"),
    (CKPT + ["--stage", "1", "--load_in_4bit"], "--load_in_4bit: stage 1 trains the projector"),
]


def _parse(name: str, argv: list[str], tmp_path):
    return load_example(name).make_parser().parse_args_and_config([*argv, "--output_dir", str(tmp_path), *COMMON])


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("argv, message", REFUSED + SFT_ONLY)
def test_every_example_refuses_what_the_library_refuses(name, argv, message, tmp_path):
    if (argv, message) in SFT_ONLY and name != "train_sft":
        argv, message = argv, "trains like stage 2; --stage 1 does not apply"
    example = load_example(name)
    args = _parse(name, argv, tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        example.main(*args)  # the example's own steps: load_model_and_processor checks first


@pytest.mark.parametrize("name", EXAMPLES)
def test_4bit_and_8bit_together(name, tmp_path):
    with pytest.raises(ValueError, match="8 bit and 4 bit"):  # TRL's ModelConfig refuses it while parsing
        _parse(name, CKPT + ["--use_peft", "--load_in_4bit", "--load_in_8bit"], tmp_path)


def test_every_model_config_field_is_honoured_or_refused(tmp_path):
    """A new TRL field is refused until the recipes read it: no flag is accepted and ignored."""
    from trl import ModelConfig

    script_args, training_args, model_args = _parse("train_sft", CKPT, tmp_path)
    unknown = set(f.name for f in dataclasses.fields(ModelConfig)) - MODEL_CONFIG_FIELDS
    assert not unknown, f"ModelConfig fields neither honoured nor refused: {unknown}"

    @dataclasses.dataclass
    class NewerModelConfig(ModelConfig):
        new_trl_switch: bool = False

    newer = NewerModelConfig(**{**dataclasses.asdict(model_args), "new_trl_switch": True})
    with pytest.raises(ValueError, match="--new_trl_switch: not supported"):
        check_model_args(script_args, training_args, newer)


def test_mlan_honours_train_llm_and_refuses_text_only_samples(workdir, tmp_path):  # noqa: F811
    """train_mlan.py --train_llm False: the LLM stays frozen, so its text-only samples are refused before training
    (by the trainer, whichever program builds it)."""
    argv = [
        "--model_name_or_path",
        str(workdir / "parrot"),
        "--text_datasets",
        str(workdir / "text.json"),
        "--train_llm",
        "False",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        *COMMON,
    ]
    with pytest.raises(ValueError, match="have no image, but the LLM is frozen"):
        run_example("train_mlan", argv)


def test_library_steps_do_not_change_their_arguments(workdir, tmp_path):  # noqa: F811
    from transformers_parrot.training import ParrotSFTTrainer, load_llava_json

    script_args, training_args, model_args = _parse(
        "train_sft", ["--model_name_or_path", str(workdir / "parrot")], tmp_path
    )
    before = [dataclasses.replace(a) for a in (script_args, training_args, model_args)]
    model = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot")
    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    dataset = load_llava_json(workdir / "visual.json", workdir / "images")
    with pytest.raises(ValueError, match="prepare_stage before building a Parrot trainer"):
        ParrotSFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=processor)
    args, peft_config = prepare_stage(model, script_args, training_args, model_args)
    assert args is not training_args and args.learning_rate == 2e-5 and training_args.learning_rate is None
    assert args.dataset_kwargs["skip_prepare_dataset"] and peft_config is None
    assert [script_args, training_args, model_args] == before


def test_compact_lm_head_falls_back_to_trls_when_trl_changes(workdir, monkeypatch, caplog):  # noqa: F811
    import trl
    from trl.trainer import utils as trl_utils

    from transformers_parrot.training import lm_head

    def fused_model():
        model = ParrotForConditionalGeneration.from_pretrained(workdir / "parrot")
        trl_utils.add_fused_lm_head(model)
        return model

    assert lm_head.trl_fused_head()[0] is trl_utils.FusedCausalLMOutput  # the installed TRL is one it reproduces
    with monkeypatch.context() as patch:
        patch.setattr(trl, "__version__", "2.0.0")
        with caplog.at_level(logging.WARNING, logger="transformers_parrot"):
            assert not lm_head.use_compact_lm_head(fused_model())
        assert "keeping TRL's own fused LM head" in caplog.text and "TRL 2.0.0 is outside" in caplog.text
    with monkeypatch.context() as patch:
        patch.delattr(trl_utils, "FusedCausalLMOutput")
        assert "no add_fused_lm_head / FusedCausalLMOutput" in lm_head.trl_fused_head()[1]

    @dataclasses.dataclass
    class RenamedOutput(trl_utils.FusedCausalLMOutput):
        token_log_probs: torch.Tensor | None = None

    with monkeypatch.context() as patch:
        patch.setattr(trl_utils, "FusedCausalLMOutput", RenamedOutput)
        model = fused_model()
        assert not lm_head.use_compact_lm_head(model)
        assert "fields" in lm_head.trl_fused_head()[1]
    # the fallback is TRL's head itself, and it works
    processor = ParrotProcessor.from_pretrained(workdir / "parrot")
    batch = processor(text=["<image>\nhi"], images=[torch.zeros(3, 20, 20)], return_tensors="pt")
    labels = batch["input_ids"].clone()
    out = model(**batch, labels=labels, fused_lm_head=True)
    assert torch.isfinite(out.loss) and out.log_probs.shape == labels[:, 1:].shape
