"""DPO of Parrot on image-grounded preference pairs (prompt with image, chosen, rejected) with TRL's DPOTrainer.

Full fine-tuning (a frozen copy of the policy is the reference model):
    python examples/train_dpo.py --model_name_or_path parrot-stage2 --datasets vqa_pairs.jsonl \
        --image_folders images/ --output_dir parrot-dpo
LoRA (the reference is the policy with adapters disabled): add --use_peft.
"""

from transformers_parrot.training.scripts import dpo_main

if __name__ == "__main__":
    dpo_main()
