"""MLAN (arXiv 2411.10557): language-only instruction tuning of Parrot, optionally with a small share of visual
samples in the same batches.

    python examples/train_mlan.py --model_name_or_path parrot-stage1 \
        --text_datasets text_instructions.jsonl --visual_datasets llava_v1_5_mix665k.json --visual_ratio 0.1 \
        --image_folders images/ --output_dir parrot-mlan
"""

from transformers_parrot.training.scripts import sft_main

if __name__ == "__main__":
    sft_main(mlan=True)
