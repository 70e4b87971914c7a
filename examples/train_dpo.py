"""DPO of Parrot on image-grounded preference pairs (prompt with image, chosen, rejected) on TRL's DPOTrainer.

Full fine-tuning (the reference model is a frozen copy of the starting model):
    accelerate launch --config_file examples/accelerate/zero3.yaml examples/train_dpo.py \
        --model_name_or_path parrot-stage2 --datasets vqa_preferences.jsonl --image_folders images/ \
        --beta 0.1 --output_dir parrot-dpo
LoRA (the reference is the model with its adapters disabled): add --use_peft.

Data: rows with `prompt` (a string with <image>, or messages), `chosen` and `rejected` (strings or one assistant
message) and `image`/`images`. Every DPOConfig / ModelConfig flag works, also from `--config recipe.yaml`; flags
left unset follow `ParrotDPOConfig` (learning rate 5e-7, the paper's schedule, max_length 2048).
"""

import copy

from trl import ModelConfig, TrlParser

from transformers_parrot.training import (
    ParrotDPOConfig,
    ParrotDPOTrainer,
    ParrotScriptArguments,
    check_max_length,
    load_model_and_processor,
    load_preference_data,
    prepare_stage,
    save_trained,
)


def main(script_args: ParrotScriptArguments, training_args: ParrotDPOConfig, model_args: ModelConfig,
         callbacks: list | None = None) -> ParrotDPOTrainer:
    ################
    # Model, reference model & processor: the policy trains as in stage 2 (LoRA on the LLM with --use_peft)
    ################
    model, processor = load_model_and_processor(script_args, model_args)
    peft_config = prepare_stage(model, 2, training_args, model_args, train_vision=script_args.train_vision)
    ref_model = None if peft_config is not None else copy.deepcopy(model).eval().requires_grad_(False)

    ################
    # Dataset: preference pairs, every pair validated, mixed by --dataset_ratios
    ################
    train_dataset, report = load_preference_data(script_args, seed=training_args.seed)

    ################
    # Collator: DPOTrainer's vision collator; --max_length must hold the prompt's image tokens
    ################
    check_max_length(training_args.max_length, processor.image_seq_length, script_args.max_images_per_sample)

    ################
    # Training
    ################
    trainer = ParrotDPOTrainer(
        model=model,
        ref_model=ref_model,
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
        print(f"preference data: {report.summary()}")
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((ParrotScriptArguments, ParrotDPOConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
