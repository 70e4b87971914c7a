"""Parrot supervised fine-tuning on TRL's SFTTrainer.

Stage 1 (modality alignment, projector only, MoE bypassed):
    python examples/train_sft.py --stage 1 --vision_model openai/clip-vit-large-patch14-336 \
        --llm_model Qwen/Qwen1.5-7B-Chat --datasets blip_laion_cc_sbu_558k.json --image_folders images/ \
        --output_dir parrot-stage1
Stage 2 (projector + MoE + LLM; add --use_peft for LoRA on the LLM):
    python examples/train_sft.py --stage 2 --model_name_or_path parrot-stage1 \
        --datasets llava_v1_5_mix665k.json parrot_zh.json --dataset_ratios 0.9 0.1 --image_folders images/ \
        --output_dir parrot-stage2
Every SFTConfig/ModelConfig flag works; see examples/README.md.
"""

from transformers_parrot.training.scripts import sft_main

if __name__ == "__main__":
    sft_main()
