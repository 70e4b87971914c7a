"""DPO of Parrot on image-grounded preference pairs (prompt with image, chosen, rejected) on TRL's DPOTrainer.

Full fine-tuning (the reference model is a frozen copy of the starting model):
    accelerate launch --config_file examples/accelerate/zero3.yaml examples/train_dpo.py \
        --model_name_or_path parrot-stage2 --datasets vqa_preferences.jsonl --image_folders images/ \
        --beta 0.1 --output_dir parrot-dpo
LoRA (the reference is the model with its adapters disabled): add --use_peft; QLoRA: also --load_in_4bit
--dtype bfloat16.

Data: rows with `prompt` (a string with <image>, or messages), `chosen` and `rejected` (strings or one assistant
message) and `image`/`images`. Every DPOConfig / ModelConfig flag works or is refused with the reason, also from
`--config recipe.yaml`; flags left unset follow `ParrotDPOConfig` (learning rate 5e-7, the paper's schedule,
max_length 2048).
"""

from trl import ModelConfig

from transformers_parrot.training import (
    ParrotDPOConfig,
    ParrotDPOTrainer,
    ParrotScriptArguments,
    ParrotTrlParser,
    load_model_and_processor,
    load_preference_data,
    prepare_stage,
    save_trained,
)


def main(
    script_args: ParrotScriptArguments,
    training_args: ParrotDPOConfig,
    model_args: ModelConfig,
    callbacks: list | None = None,
) -> ParrotDPOTrainer:
    ################
    # Model, reference model & processor: the policy trains as in stage 2 (LoRA on the LLM with --use_peft)
    ################
    model, processor = load_model_and_processor(script_args, training_args, model_args, recipe="dpo")
    training_args, peft_config = prepare_stage(model, script_args, training_args, model_args, recipe="dpo")

    ################
    # Dataset: preference pairs, every pair validated, mixed by --dataset_ratios
    ################
    train_dataset, report = load_preference_data(script_args, seed=training_args.seed)

    ################
    # Training: without LoRA the reference is a frozen copy of the starting model, with LoRA (QLoRA too) the
    # policy with its adapters disabled; the trainer refuses a --max_length that would cut the prompt's image
    ################
    trainer = ParrotDPOTrainer(
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
        print(f"preference data: {report.summary()}")
    return trainer


def make_parser() -> ParrotTrlParser:
    # TRL's parser; every model, data, folder and file argument is checked after parsing, before anything loads
    return ParrotTrlParser((ParrotScriptArguments, ParrotDPOConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
