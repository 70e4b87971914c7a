"""Worker of test_training.py::test_two_process_ddp: runs the SFT recipe under torchrun and dumps each rank's
weights to <output_dir>/rank{r}.pt, with the number of steps in which one rank's batch held images and the other's
did not."""

import os
import sys

import torch
import torch.distributed as dist

from transformers_parrot.training.scripts import sft_main

if __name__ == "__main__":
    has_images: list[bool] = []

    def record(trainer):
        model = trainer.model
        model.register_forward_pre_hook(
            lambda module, args, kwargs: has_images.append(kwargs.get("pixel_values") is not None), with_kwargs=True
        )

    trainer = sft_main(sys.argv[1:], before_train=record)
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, has_images)
    mixed_steps = sum(len(set(flags)) > 1 for flags in zip(*per_rank))
    rank = trainer.accelerator.process_index
    torch.save({"state": state, "world_size": trainer.accelerator.num_processes, "mixed_steps": mixed_steps,
                "global_step": trainer.state.global_step},
               os.path.join(trainer.args.output_dir, f"rank{rank}.pt"))
