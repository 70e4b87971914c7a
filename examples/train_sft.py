"""Parrot supervised fine-tuning on TRL's SFTTrainer (paper §3).

Stage 1, modality alignment (a fresh Parrot from CLIP + Qwen2; only the projector trains, the MoE is bypassed):
    accelerate launch --config_file examples/accelerate/zero2.yaml examples/train_sft.py --stage 1 \
        --vision_model openai/clip-vit-large-patch14-336 --llm_model Qwen/Qwen1.5-7B-Chat \
        --datasets blip_laion_cc_sbu_558k.json --image_folders images/ --output_dir parrot-stage1

Stage 2, multilingual instruction tuning (projector + MoE + LLM; add --use_peft for LoRA on the LLM):
    accelerate launch --config_file examples/accelerate/zero3.yaml examples/train_sft.py --stage 2 \
        --model_name_or_path parrot-stage1 --datasets llava_v1_5_mix665k.json parrot_zh.json \
        --dataset_ratios 0.9 0.1 --image_folders images/ --output_dir parrot-stage2
QLoRA (LoRA on the LLM loaded in 4 bits, projector + MoE in full precision): add --use_peft --load_in_4bit
--dtype bfloat16; <output_dir>/merged is then the unquantized base with the adapter merged. See docs/training.md.

Every SFTConfig / ModelConfig flag works or is refused with the reason, also from `--config recipe.yaml`. Flags left
unset follow the paper (`ParrotSFTConfig`: the stage's learning rate, cosine schedule, 3 % warmup, 1 epoch,
max_length 2048, ...).
"""

from trl import ModelConfig

from transformers_parrot.training import (
    ParrotScriptArguments,
    ParrotSFTConfig,
    ParrotSFTTrainer,
    ParrotTrlParser,
    load_model_and_processor,
    load_training_data,
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
    # Model & processor: a Parrot checkpoint, or a fresh Parrot from --vision_model + --llm_model
    ################
    model, processor = load_model_and_processor(script_args, training_args, model_args, recipe="sft")
    # stage 1: projector only, MoE off; stage 2: projector + MoE + LLM, MoE on (LoRA on the LLM with --use_peft)
    training_args, peft_config = prepare_stage(model, script_args, training_args, model_args, recipe="sft")

    ################
    # Dataset: LLaVA JSON / conversational sources, every sample validated, mixed by --dataset_ratios
    ################
    train_dataset, report = load_training_data(
        script_args, script_args.datasets, script_args.dataset_ratios, seed=training_args.seed
    )

    ################
    # Training: the vision collator renders the chat template, expands <image> and masks all but the
    # answers; the trainer refuses a --max_length that would cut an image and, with a frozen LLM, text-only samples
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
