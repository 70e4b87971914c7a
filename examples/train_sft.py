"""Parrot supervised fine-tuning on TRL's SFTTrainer (paper §3).

Stage 1, modality alignment (a fresh Parrot from CLIP + Qwen2; only the projector trains, the MoE is bypassed):
    accelerate launch --config_file examples/accelerate/zero2.yaml examples/train_sft.py --stage 1 \
        --vision_model openai/clip-vit-large-patch14-336 --llm_model Qwen/Qwen1.5-7B-Chat \
        --datasets blip_laion_cc_sbu_558k.json --image_folders images/ --output_dir parrot-stage1

Stage 2, multilingual instruction tuning (projector + MoE + LLM; add --use_peft for LoRA on the LLM):
    accelerate launch --config_file examples/accelerate/zero3.yaml examples/train_sft.py --stage 2 \
        --model_name_or_path parrot-stage1 --datasets llava_v1_5_mix665k.json parrot_zh.json \
        --dataset_ratios 0.9 0.1 --image_folders images/ --output_dir parrot-stage2

Every SFTConfig / ModelConfig flag works, also from `--config recipe.yaml`. Flags left unset follow the paper
(`ParrotSFTConfig`: the stage's learning rate, cosine schedule, 3 % warmup, 1 epoch, max_length 2048, ...).
"""

from trl import ModelConfig, TrlParser

from transformers_parrot.training import (
    ParrotScriptArguments,
    ParrotSFTConfig,
    ParrotSFTTrainer,
    check_max_length,
    check_text_only_samples,
    load_model_and_processor,
    load_training_data,
    prepare_stage,
    save_trained,
)


def main(script_args: ParrotScriptArguments, training_args: ParrotSFTConfig, model_args: ModelConfig,
         callbacks: list | None = None) -> ParrotSFTTrainer:
    ################
    # Model & processor: a Parrot checkpoint, or a fresh Parrot from --vision_model + --llm_model
    ################
    model, processor = load_model_and_processor(script_args, model_args)
    # stage 1: projector only, MoE off; stage 2: projector + MoE + LLM, MoE on (LoRA on the LLM with --use_peft)
    peft_config = prepare_stage(model, script_args.stage, training_args, model_args,
                                train_vision=script_args.train_vision, train_llm=script_args.train_llm)

    ################
    # Dataset: LLaVA JSON / conversational sources, every sample validated, mixed by --dataset_ratios
    ################
    train_dataset, report = load_training_data(script_args, script_args.datasets, script_args.dataset_ratios,
                                               seed=training_args.seed)

    ################
    # Collator: SFTTrainer's vision collator renders the chat template, expands <image> and masks all but the
    # answers; it must never cut an image's tokens
    ################
    check_max_length(training_args.max_length, processor.image_seq_length, script_args.max_images_per_sample)
    check_text_only_samples(model, train_dataset)  # a frozen LLM: text-only samples would train nothing

    ################
    # Training
    ################
    trainer = ParrotSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        multimodal_lr=script_args.multimodal_lr,
        router_lr=script_args.router_lr,
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


def make_parser() -> TrlParser:
    return TrlParser((ParrotScriptArguments, ParrotSFTConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
