"""MLAN (arXiv 2411.10557): language-only instruction tuning of Parrot on TRL's SFTTrainer, optionally with a small
share of visual samples in the same batches. Trains like stage 2 (projector + MoE + LLM, MoE on).

    python examples/train_mlan.py --model_name_or_path parrot-stage1 \
        --text_datasets text_instructions.jsonl --visual_datasets llava_v1_5_mix665k.json --visual_ratio 0.1 \
        --image_folders images/ --output_dir parrot-mlan

`--visual_ratio 0` trains on text only. Every SFTConfig / ModelConfig flag works or is refused with the reason, also
from `--config recipe.yaml`; flags left unset follow the paper (`ParrotSFTConfig`, with stage 2's learning rate).
"""

from trl import ModelConfig

from transformers_parrot.training import (
    ParrotScriptArguments,
    ParrotSFTConfig,
    ParrotSFTTrainer,
    ParrotTrlParser,
    load_model_and_processor,
    load_training_data,
    mlan_sources,
    prepare_stage,
    save_trained,
)


def main(
    script_args: ParrotScriptArguments,
    training_args: ParrotSFTConfig,
    model_args: ModelConfig,
    callbacks: list | None = None,
) -> ParrotSFTTrainer:
    ################
    # Model & processor: a Parrot checkpoint (usually stage 1's), set up as in stage 2
    ################
    model, processor = load_model_and_processor(script_args, training_args, model_args, recipe="mlan")
    training_args, peft_config = prepare_stage(model, script_args, training_args, model_args, recipe="mlan")

    ################
    # Dataset: the text sources share 1 - --visual_ratio of the samples, the visual sources the rest
    ################
    sources, ratios = mlan_sources(script_args)
    train_dataset, report = load_training_data(script_args, sources, ratios, seed=training_args.seed)

    ################
    # Training: the vision collator takes batches where some rows have no image; the trainer refuses a
    # --max_length that would cut an image
    ################
    trainer = ParrotSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        script_args=script_args,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    ################
    # Save (and push with --push_to_hub): model or LoRA adapter + processor; LoRA also merged into <output_dir>/merged
    ################
    save_trained(trainer, training_args.output_dir, merge_lora=script_args.merge_lora)
    if trainer.accelerator.is_main_process:
        print(f"training data: {report.summary()}")
    return trainer


def make_parser() -> ParrotTrlParser:
    # TRL's parser; every model, data, folder and file argument is checked after parsing, before anything loads
    return ParrotTrlParser((ParrotScriptArguments, ParrotSFTConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
